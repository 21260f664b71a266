//! The FAMix segmenter: CLIP ResNet backbone (no attention pool) + DeepLabv3+ head.
//! The forward exposes the layer1 features (`restyle`) so local style mixing can
//! replace them before layer2 and the head's low-level branch.

use crate::error::{fail, Error, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Tensor};

use crate::clip::{ModifiedResNet, OutputStride, ResNetConfig};
use crate::data::classes::ClassSet;
use crate::model::deeplab::{DeepLabHead, HeadConfig};

/// Which parts train (docs/src/design.md §4). Frozen parts have no gradient and keep BN in eval mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FreezePolicy {
    /// Synthetic sources (GTA5, Synthia): only layer4's last block and the head train.
    Synthetic,
    /// Cityscapes (real-to-real): the whole layer4 and the head train.
    Layer4,
    /// Nothing is frozen: everything trains (`none` in files and flags).
    #[serde(rename = "none")]
    Nothing,
}

impl FreezePolicy {
    /// Does block `b` of stage `stage` (0-based) train?
    pub(crate) fn block_trains(self, stage: usize, block: usize, blocks_in_stage: usize) -> bool {
        match self {
            FreezePolicy::Nothing => true,
            FreezePolicy::Layer4 => stage == 3,
            FreezePolicy::Synthetic => stage == 3 && block + 1 == blocks_in_stage,
        }
    }
    /// Does the stem train?
    pub(crate) fn stem_trains(self) -> bool {
        self == FreezePolicy::Nothing
    }
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            FreezePolicy::Synthetic => "synthetic",
            FreezePolicy::Layer4 => "layer4",
            FreezePolicy::Nothing => "none",
        }
    }
}
crate::names::named!(FreezePolicy, [FreezePolicy::Synthetic, FreezePolicy::Layer4, FreezePolicy::Nothing]);

/// A segmenter's trainable parameters by group ([`Segmenter::param_groups`]).
pub struct ParamGroups {
    /// The backbone's (named `backbone.*`).
    pub backbone: NamedTensors,
    /// The head's (named `classifier.*`).
    pub head: NamedTensors,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ConfigRecord", into = "ConfigRecord")]
/// Everything that defines a segmenter besides its weights.
pub struct SegmenterConfig {
    /// The CLIP image tower's architecture (without the attention pool).
    pub backbone: ResNetConfig,
    /// The DeepLabv3+ head.
    pub head: HeadConfig,
    /// The backbone's output stride.
    pub output_stride: OutputStride,
    /// The classes it predicts (names, colours, prompt words, label encoding).
    pub classes: ClassSet,
    /// What trains.
    pub freeze: FreezePolicy,
}

/// A configuration as checkpoints store it: names and colours as lists (what every
/// famix version wrote and reads), and the whole class set only when it is not the
/// default one, so headers of Cityscapes models stay as they were.
#[derive(Serialize, Deserialize)]
struct ConfigRecord {
    backbone: ResNetConfig,
    head: HeadConfig,
    output_stride: OutputStride,
    class_names: Vec<String>,
    palette: Vec<[u8; 3]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    classes: Option<ClassSet>,
    freeze: FreezePolicy,
}

impl From<SegmenterConfig> for ConfigRecord {
    fn from(c: SegmenterConfig) -> Self {
        ConfigRecord {
            backbone: c.backbone,
            head: c.head,
            output_stride: c.output_stride,
            class_names: c.classes.names(),
            palette: c.classes.palette(),
            classes: (!c.classes.is_default()).then_some(c.classes),
            freeze: c.freeze,
        }
    }
}

impl TryFrom<ConfigRecord> for SegmenterConfig {
    type Error = String;
    fn try_from(r: ConfigRecord) -> std::result::Result<Self, String> {
        if r.class_names.len() != r.palette.len() {
            return Err(format!("{} class names but {} colours", r.class_names.len(), r.palette.len()));
        }
        let classes = match r.classes {
            Some(c) => {
                c.validate()?;
                if c.names() != r.class_names || c.palette() != r.palette {
                    return Err("class_names/palette disagree with the class set".into());
                }
                c
            }
            None => ClassSet::from_names(r.class_names, r.palette),
        };
        Ok(SegmenterConfig { backbone: r.backbone, head: r.head, output_stride: r.output_stride, classes, freeze: r.freeze })
    }
}

impl SegmenterConfig {
    /// A configuration with the reference head and the classes of [`ClassSet::default_for`].
    pub fn new(backbone: ResNetConfig, num_classes: i64, output_stride: OutputStride, freeze: FreezePolicy) -> Self {
        SegmenterConfig {
            backbone: ResNetConfig { output_dim: None, ..backbone },
            head: HeadConfig::reference(num_classes),
            output_stride,
            classes: ClassSet::default_for(num_classes.max(0) as usize),
            freeze,
        }
    }

    /// The class names, in training-id order.
    pub fn class_names(&self) -> Vec<String> {
        self.classes.names()
    }

    /// The class colours, in training-id order.
    pub fn palette(&self) -> Vec<[u8; 3]> {
        self.classes.palette()
    }

    /// Checks that the class set is valid and matches the head's class count.
    pub fn validate(&self) -> Result<()> {
        let n = self.head.num_classes;
        if self.classes.len() as i64 != n {
            fail!(InvalidSetting, "classes", "the head predicts {n} classes but the class set has {}", self.classes.len());
        }
        self.classes.validate().map_err(|problem| Error::invalid_setting("classes", problem))
    }
}

pub use crate::nn::NamedTensors;

/// A network that computes a segmenter's eval-mode logits in place of libtorch: an
/// inference engine ([`crate::engine`]) attached with [`Segmenter::set_engine`].
pub trait ExternalNet: Send {
    /// The engine's name (`onnxruntime`).
    fn name(&self) -> &'static str;
    /// Logits (N, K, H, W) float32 on the CPU of normalised images (N, 3, H, W)
    /// float32 on the CPU, at the input's resolution. `model` is the segmenter the
    /// engine was attached to (for engines that build size-specific graphs lazily).
    fn logits(&self, model: &Segmenter, x: &Tensor) -> Result<Tensor>;
}

/// A segmenter's weights and output stride as they are at one moment
/// ([`Segmenter::stamp`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelStamp {
    weights: Vec<crate::nn::Stamp>,
    output_stride: OutputStride,
}

/// The FAMix segmenter.
pub struct Segmenter {
    /// All parameters and batch-norm buffers.
    pub vs: nn::VarStore,
    /// CLIP's image tower.
    pub backbone: ModifiedResNet,
    /// The DeepLabv3+ head.
    pub head: DeepLabHead,
    /// Its configuration (read through [`Segmenter::config`]; the output stride
    /// changes only through [`Segmenter::set_output_stride`], which rebuilds the dilations).
    config: SegmenterConfig,
    /// Whether the inference fast path is on ([`Segmenter::fold`]).
    folded: bool,
    /// Whether inputs go channels-last (both fast paths).
    channels_last: bool,
    /// The inference engine that replaces libtorch for eval-mode forwards, if any.
    external: Option<Box<dyn ExternalNet>>,
    /// Every variable, sorted by name: a handle sharing the variable's tensor (as the
    /// layers' own handles do: writes and `set_data` show through), with the shape
    /// and element type the network was built with ([`Segmenter::stamp`],
    /// [`Segmenter::check_weights`]).
    built: Vec<(String, Tensor, Vec<i64>, tch::Kind)>,
}

impl std::fmt::Debug for Segmenter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segmenter").field("config", &self.config).field("device", &self.device()).finish_non_exhaustive()
    }
}

impl Segmenter {
    /// A new segmenter: random backbone (to be loaded from CLIP) and Kaiming-initialised head.
    pub fn new(config: SegmenterConfig, device: Device) -> Result<Self> {
        config.validate()?;
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let backbone = ModifiedResNet::new(&(&root / "backbone"), &config.backbone, false, config.output_stride);
        let head = DeepLabHead::new(
            &(&root / "classifier"),
            config.backbone.low_level_channels(),
            config.backbone.high_level_channels(),
            &config.head,
            config.output_stride,
        );
        let mut built: Vec<_> = vs
            .variables()
            .into_iter()
            .map(|(name, t)| {
                let (size, kind) = (t.size(), t.kind());
                (name, t, size, kind)
            })
            .collect();
        built.sort_by(|a, b| a.0.cmp(&b.0));
        let mut s = Segmenter { vs, backbone, head, config, folded: false, channels_last: false, external: None, built };
        s.apply_freeze();
        Ok(s)
    }

    /// What every weight is now (data pointer, shape, libtorch's version counter) and
    /// the output stride: equal stamps mean the network computes the same function, so
    /// an engine holding its own copy of the graph (`ExternalNet`) rebuilds it when
    /// the stamp it was built from differs.
    pub fn stamp(&self) -> ModelStamp {
        let weights = self.built.iter().map(|(_, t, _, _)| crate::nn::Stamp::of(t)).collect();
        ModelStamp { weights, output_stride: self.config.output_stride }
    }

    /// Checks that every weight still has the shape, element type and device the
    /// network was built with. The variables are shared (Python's `state_dict()`
    /// hands out the model's own tensors), so a weight replaced from outside with
    /// another shape would otherwise reach a libtorch kernel and fail inside it; every
    /// inference entry point checks first and answers with this typed error, and the
    /// model works again once the weight is restored.
    pub fn check_weights(&self) -> Result<()> {
        let device = self.device();
        for (name, t, shape, kind) in &self.built {
            let (got, got_kind, got_device) = (t.size(), t.kind(), t.device());
            if &got != shape || got_kind != *kind || got_device != device {
                crate::error::fail!(
                    Incompatible,
                    name,
                    "weight {name} is now {got:?} {got_kind:?} on {got_device:?}, but the network was built for {shape:?} {kind:?} on {device:?}: restore it, or load the model again"
                );
            }
        }
        Ok(())
    }

    /// The inference fast path (docs/src/design.md §8): every batch norm folded into its
    /// convolution once (inference uses running statistics, so conv + BN is one affine
    /// map), channels-last weights and inputs, no autograd. Forwards with `train =
    /// false` use it; training forwards are unchanged. Logits agree with the plain
    /// path to ~1e-5 (tests allow 1e-4). A layer whose tensors are written afterwards
    /// (in place, as an optimiser, a loaded state dict or an edit through PyTorch do)
    /// runs the plain path from its new weights until `fold` is called again, so a
    /// prediction never comes from stale folded weights.
    pub fn fold(&mut self) {
        if self.check_weights().is_err() {
            // Folding reads every weight; the next prediction reports the bad one.
            return;
        }
        self.backbone.fold();
        self.head.fold();
        self.folded = true;
        self.channels_last = true;
    }

    /// The training fast path: the parts the freeze policy keeps frozen (the stem and
    /// the blocks before the first trainable one — their weights and batch-norm
    /// statistics never change, and they run without autograd) are folded once, and
    /// inputs go channels-last. Trainable parts are unchanged, so gradients are those
    /// of the plain path up to rounding (tested).
    pub fn fold_frozen(&mut self) {
        let policy = self.config.freeze;
        let blocks = self.config.backbone.layers;
        self.backbone.fold_where(!policy.stem_trains(), &|s, b| !policy.block_trains(s, b, blocks[s] as usize));
        self.channels_last = true;
    }

    /// Drops the folded weights: inference runs the plain path (conv, then batch norm)
    /// again, as the reference does.
    pub fn unfold(&mut self) {
        self.backbone.unfold();
        self.head.unfold();
        self.folded = false;
        self.channels_last = false;
    }

    /// Whether [`Segmenter::fold`] is in effect.
    pub fn is_folded(&self) -> bool {
        self.folded
    }

    /// Where the weights live.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Runs inference (`predict`, `predict_ids`, and so `eval` and `serve`) on `net`
    /// instead of libtorch; `None` goes back to libtorch. Training forwards and
    /// [`Segmenter::predict_logits`] always use libtorch. An engine that holds its own
    /// copy of the graph rebuilds it when the weights or the output stride have changed
    /// since ([`Segmenter::stamp`]).
    pub fn set_engine(&mut self, net: Option<Box<dyn ExternalNet>>) {
        self.external = net;
    }

    /// The engine inference runs on: `torch`, or the attached engine's name.
    pub fn engine_name(&self) -> &'static str {
        self.external.as_ref().map_or("torch", |n| n.name())
    }

    /// The attached engine, if any.
    pub(crate) fn external(&self) -> Option<&dyn ExternalNet> {
        self.external.as_deref()
    }

    /// Its configuration: backbone, head, classes, output stride, freeze policy.
    pub fn config(&self) -> &SegmenterConfig {
        &self.config
    }

    /// Sets the head's dropout probability (used by training forwards only).
    pub fn set_dropout(&mut self, p: f64) -> Result<()> {
        if !(p.is_finite() && (0.0..1.0).contains(&p)) {
            return Err(Error::invalid_setting("dropout", format!("{p} is not in [0, 1)")));
        }
        self.config.head.dropout = p;
        Ok(())
    }

    /// Changes the output stride (dilations and ASPP rates; weights unchanged).
    pub fn set_output_stride(&mut self, os: OutputStride) {
        self.config.output_stride = os;
        self.backbone.set_output_stride(os);
        self.head.set_output_stride(os);
    }

    /// Changes what trains.
    pub fn set_freeze(&mut self, policy: FreezePolicy) {
        self.config.freeze = policy;
        self.apply_freeze();
    }

    fn apply_freeze(&mut self) {
        let policy = self.config.freeze;
        let blocks = self.config.backbone.layers;
        for (name, t) in self.vs.variables() {
            let trainable = if let Some(rest) = name.strip_prefix("backbone.") {
                if is_bn_buffer(rest) {
                    false
                } else if let Some(l) = rest.strip_prefix("layer") {
                    let mut it = l.split('.');
                    let stage: usize = it.next().and_then(|s| s.parse().ok()).unwrap_or(1) - 1;
                    let block: usize = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
                    policy.block_trains(stage, block, blocks[stage] as usize)
                } else {
                    policy.stem_trains()
                }
            } else {
                !is_bn_buffer(&name)
            };
            let _ = t.set_requires_grad(trainable);
        }
    }

    /// Trainable parameters, split into the backbone's and the head's groups (they
    /// train at different learning rates), each sorted by name.
    pub fn param_groups(&self) -> ParamGroups {
        let mut vars: Vec<(String, Tensor)> = self.vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let (backbone, head) = vars.into_iter().partition(|(n, _)| n.starts_with("backbone."));
        ParamGroups { backbone, head }
    }

    /// Logits (N, classes, H, W) at the input size. `train` uses batch statistics and
    /// dropout in the parts the freeze policy trains; `restyle` replaces the layer1
    /// features (local style mixing) before everything that consumes them.
    pub fn forward(&self, x: &Tensor, train: bool, restyle: Option<&dyn Fn(&Tensor) -> Tensor>) -> Tensor {
        let x = &if self.channels_last { crate::nn::channels_last(x) } else { x.shallow_clone() };
        let policy = self.config.freeze;
        let (h, w) = (x.size()[2], x.size()[3]);
        let low_trains = train && policy.stem_trains();
        let low = if low_trains { self.backbone.forward_low(x, true) } else { tch::no_grad(|| self.backbone.forward_low(x, false)) };
        let low = match restyle {
            Some(f) => f(&low),
            None => low,
        };
        let blocks = self.config.backbone.layers;
        let train_fn = |stage: usize, block: usize| train && policy.block_trains(stage, block, blocks[stage] as usize);
        let high = self.backbone.forward_high(&low, &train_fn);
        let logits = self.head.forward(&low, &high, train, self.config.head.dropout);
        logits.upsample_bilinear2d([h, w], false, None, None)
    }

    /// Inference logits at `scale` (and optionally averaged with scale 1), resized to
    /// the input size with align_corners=true as the reference's evaluation does;
    /// always computed by libtorch, whatever engine is attached.
    pub fn predict_logits(&self, x: &Tensor, scale: f64, ensemble: bool) -> Tensor {
        let torch = |x: &Tensor| Ok::<_, std::convert::Infallible>(self.forward(x, false, None));
        match tch::no_grad(|| at_test_scale(x, scale, ensemble, torch)) {
            Ok(t) => t,
            Err(never) => match never {},
        }
    }
}

/// A batch-norm running statistic (never trained by gradient)?
pub(crate) fn is_bn_buffer(name: &str) -> bool {
    name.ends_with("running_mean") || name.ends_with("running_var")
}

/// Logits at the input's resolution with a test `scale` (resize the input, run `net`,
/// resize the logits back, bilinear with aligned corners as the reference's
/// evaluation) and, with `ensemble`, the mean with the logits at scale 1.
pub(crate) fn at_test_scale<E>(x: &Tensor, scale: f64, ensemble: bool, net: impl Fn(&Tensor) -> Result<Tensor, E>) -> Result<Tensor, E> {
    let (h, w) = (x.size()[2], x.size()[3]);
    let base = if scale == 1.0 || ensemble { Some(net(x)?) } else { None };
    if scale == 1.0 {
        if let Some(b) = base {
            return Ok(b);
        }
    }
    let sh = ((h as f64) * scale).floor() as i64;
    let sw = ((w as f64) * scale).floor() as i64;
    let xs = x.upsample_bilinear2d([sh, sw], true, None, None);
    let out = net(&xs)?.upsample_bilinear2d([h, w], true, None, None);
    Ok(match base {
        Some(b) if ensemble => (out + b) / 2.0,
        _ => out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::ResNetConfig;

    /// A weight replaced from outside by one of another shape is a typed error at the
    /// next prediction (not a libtorch failure inside a kernel); restored, the model
    /// predicts exactly as before (bit-exact).
    #[test]
    fn a_weight_of_another_shape_is_an_error_until_restored() {
        let cfg = SegmenterConfig::new(ResNetConfig::tiny(), 5, OutputStride::Os16, FreezePolicy::Synthetic);
        let mut m = Segmenter::new(SegmenterConfig { head: HeadConfig::tiny(5), ..cfg }, Device::Cpu).unwrap();
        m.fold();
        let x = Tensor::randn([1, 3, 64, 64], (tch::Kind::Float, Device::Cpu));
        let before = m.logits(&x, 1.0, false).unwrap();
        let key = "classifier.classifier.3.weight";
        let mut w = m.vs.variables()[key].shallow_clone();
        let original = w.detach().copy();
        w.set_data(&Tensor::zeros([2, 2, 1, 1], (tch::Kind::Float, Device::Cpu)));
        let e = m.logits(&x, 1.0, false).err().unwrap();
        assert_eq!(e.kind(), crate::error::ErrorKind::Incompatible, "{e}");
        assert!(e.to_string().contains(key), "{e}");
        m.fold();
        w.set_data(&original);
        m.fold();
        assert!(m.logits(&x, 1.0, false).unwrap().equal(&before));
    }
}
