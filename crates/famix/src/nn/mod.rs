//! The few layers famix's models are made of, with PyTorch's parameter names
//! (`weight`, `bias`, `running_mean`, `running_var`) so state dicts map one to one.
//! Stride/padding/dilation are call arguments, not fields: the same weights serve a
//! backbone at several output strides.
//!
//! [`ConvBn`] is the one convolution layer of the networks: a convolution, its batch
//! norm if it has one, and — once [`ConvBn::fold`]ed for inference — both as a single
//! convolution; its `forward` picks the path. Network blocks are written once, against
//! [`ops::Ops`]: executed eagerly ([`ops::Eager`]) or emitted as ONNX nodes
//! ([`onnx::Graph`]), so a block's forward and its export cannot drift apart.

pub mod onnx;
pub mod ops;

use tch::{nn, Tensor};

/// Tensors with their variable names.
pub type NamedTensors = Vec<(String, Tensor)>;

/// Batch-norm epsilon (PyTorch's default).
pub const BN_EPS: f64 = 1e-5;
/// Batch-norm running-statistics momentum (PyTorch's default).
pub const BN_MOMENTUM: f64 = 0.1;

#[derive(Debug)]
/// A 2-D convolution's weights.
pub struct Conv2d {
    /// (out, in, k, k).
    pub weight: Tensor,
    /// (out), if any.
    pub bias: Option<Tensor>,
}

impl Conv2d {
    /// PyTorch's default init (kaiming-uniform with a = sqrt(5), i.e. U(±1/sqrt(fan_in))).
    pub fn new(p: &nn::Path, cin: i64, cout: i64, k: i64, bias: bool) -> Self {
        let fan_in = (cin * k * k) as f64;
        let bound = 1.0 / fan_in.sqrt();
        let weight = p.var("weight", &[cout, cin, k, k], nn::Init::Uniform { lo: -bound, up: bound });
        let bias = bias.then(|| p.var("bias", &[cout], nn::Init::Uniform { lo: -bound, up: bound }));
        Conv2d { weight, bias }
    }

    /// Kaiming-normal (fan_in, gain sqrt(2)) as `nn.init.kaiming_normal_` does; the
    /// DeepLab head's init.
    pub(crate) fn new_kaiming_normal(p: &nn::Path, cin: i64, cout: i64, k: i64, bias: bool) -> Self {
        let fan_in = (cin * k * k) as f64;
        let std = (2.0 / fan_in).sqrt();
        let weight = p.var("weight", &[cout, cin, k, k], nn::Init::Randn { mean: 0.0, stdev: std });
        let bound = 1.0 / fan_in.sqrt();
        let bias = bias.then(|| p.var("bias", &[cout], nn::Init::Uniform { lo: -bound, up: bound }));
        Conv2d { weight, bias }
    }

    /// The convolution with the given stride, padding and dilation.
    pub fn forward(&self, x: &Tensor, stride: i64, padding: i64, dilation: i64) -> Tensor {
        x.conv2d(&self.weight, self.bias.as_ref(), [stride, stride], [padding, padding], [dilation, dilation], 1)
    }
}

#[derive(Debug)]
/// Batch normalisation over channels.
pub struct BatchNorm2d {
    /// Scale.
    pub weight: Tensor,
    /// Shift.
    pub bias: Tensor,
    /// Running mean (a buffer).
    pub running_mean: Tensor,
    /// Running variance (a buffer).
    pub running_var: Tensor,
}

impl BatchNorm2d {
    /// Weight 1, bias 0, running mean 0, running variance 1.
    pub fn new(p: &nn::Path, c: i64) -> Self {
        BatchNorm2d {
            weight: p.var("weight", &[c], nn::Init::Const(1.0)),
            bias: p.var("bias", &[c], nn::Init::Const(0.0)),
            running_mean: p.zeros_no_train("running_mean", &[c]),
            running_var: p.ones_no_train("running_var", &[c]),
        }
    }

    /// `train` = batch statistics and running-stat updates (PyTorch `.train()`),
    /// otherwise the running statistics (`.eval()`).
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        Tensor::batch_norm(
            x,
            Some(&self.weight),
            Some(&self.bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            train,
            BN_MOMENTUM,
            BN_EPS,
            true,
        )
    }
}

/// A convolution followed by an eval-mode batch norm, as one convolution with a bias:
/// BN(conv(x)) = γ·(W∗x + b − μ)/√(σ² + ε) + β, so W' = W·s and b' = (b − μ)·s + β with
/// s = γ/√(σ² + ε) per output channel. Computed in f64 and returned in f32 (weight,
/// bias), on the weights' device.
pub fn fold_bn(conv: &Conv2d, bn: &BatchNorm2d) -> (Tensor, Tensor) {
    tch::no_grad(|| {
        let d = tch::Kind::Double;
        let scale = bn.weight.to_kind(d) / (bn.running_var.to_kind(d) + BN_EPS).sqrt();
        let w = conv.weight.to_kind(d) * scale.view([-1, 1, 1, 1]);
        let b0 = conv.bias.as_ref().map(|b| b.to_kind(d)).unwrap_or_else(|| scale.zeros_like());
        let b = (b0 - bn.running_mean.to_kind(d)) * &scale + bn.bias.to_kind(d);
        (w.to_kind(tch::Kind::Float), b.to_kind(tch::Kind::Float))
    })
}

/// `t` (4-D) with channels-last strides (NHWC in memory, NCHW in shape): what
/// `memory_format=torch.channels_last` gives. tch has no memory-format argument, so
/// the layout is made by permuting, copying and permuting back; oneDNN's CPU and
/// cuDNN's convolutions then pick their NHWC kernels, and element-wise ops keep it.
pub fn channels_last(t: &Tensor) -> Tensor {
    t.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

#[derive(Debug)]
/// A convolution with its eval-mode batch norm folded in ([`fold_bn`]), for
/// inference: one convolution with a bias instead of a convolution and a batch norm.
/// Weights are channels-last (see [`channels_last`]).
///
/// Folded weights do not require grad, so bf16 autocast's cast cache does not keep
/// their bf16 copies and would cast them again on every forward; the copy is made once,
/// on the first forward under autocast, and reused (the same rounding autocast applies).
pub struct FoldedConv {
    /// (out, in, k, k), channels-last.
    pub weight: Tensor,
    /// (out).
    pub bias: Tensor,
    /// (weight, bias) in bf16, made on first use under autocast.
    bf16: std::sync::OnceLock<(Tensor, Tensor)>,
}

impl FoldedConv {
    /// Folds `bn` into `conv`.
    pub fn new(conv: &Conv2d, bn: &BatchNorm2d) -> Self {
        let (w, b) = fold_bn(conv, bn);
        FoldedConv { weight: channels_last(&w), bias: b, bf16: Default::default() }
    }

    /// A convolution without batch norm, in the same form (its bias or zeros).
    pub fn plain(conv: &Conv2d) -> Self {
        let w = conv.weight.detach();
        let bias = conv.bias.as_ref().map(|b| b.detach().copy()).unwrap_or_else(|| Tensor::zeros([w.size()[0]], (w.kind(), w.device())));
        FoldedConv { weight: channels_last(&w), bias, bf16: Default::default() }
    }

    /// The folded convolution with the given stride, padding and dilation.
    pub fn forward(&self, x: &Tensor, stride: i64, padding: i64, dilation: i64) -> Tensor {
        let (w, b) = if crate::device::Autocast::is_enabled(x.device()) {
            let (w, b) = self.bf16.get_or_init(|| (self.weight.to_kind(tch::Kind::BFloat16), self.bias.to_kind(tch::Kind::BFloat16)));
            (w, b)
        } else {
            (&self.weight, &self.bias)
        };
        x.conv2d(w, Some(b), [stride, stride], [padding, padding], [dilation, dilation], 1)
    }
}

/// How a [`ConvBn`] is applied: stride, padding, dilation, a ReLU after it, and whether
/// it runs in fp32 even inside a bf16 autocast region (the classifier: bf16 rounding of
/// nearly tied logits would flip classes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvCall {
    /// Stride.
    pub stride: i64,
    /// Zero padding on each side.
    pub padding: i64,
    /// Dilation.
    pub dilation: i64,
    /// ReLU after the (normalised) convolution.
    pub relu: bool,
    /// Keep fp32 under autocast.
    pub fp32: bool,
}

impl ConvCall {
    /// Stride 1, `padding`, `dilation`, then ReLU.
    pub(crate) fn relu(padding: i64, dilation: i64) -> Self {
        ConvCall { stride: 1, padding, dilation, relu: true, fp32: false }
    }
    /// A 1×1 convolution (stride 1, no padding) without ReLU.
    pub(crate) fn linear() -> Self {
        ConvCall { stride: 1, padding: 0, dilation: 1, relu: false, fp32: false }
    }
}

/// How a [`ConvBn`]'s convolution is initialised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvInit {
    /// PyTorch's default (CLIP's ResNet).
    Default,
    /// Kaiming-normal (the DeepLab head).
    KaimingNormal,
}

/// A convolution, its batch norm (if any), and the two folded into one convolution
/// for inference. State-dict names are the convolution's and the batch norm's own.
#[derive(Debug)]
pub struct ConvBn {
    /// The convolution.
    pub conv: Conv2d,
    /// Its batch norm.
    pub bn: Option<BatchNorm2d>,
    /// The folded form (see [`ConvBn::fold`]) and the stamp of the tensors it was
    /// computed from.
    folded: Option<(FoldedConv, Vec<Stamp>)>,
}

/// What identifies a tensor's contents without reading them: its storage, shape and
/// libtorch's version counter, which every in-place write increments (an optimiser
/// step, `copy_` from a loaded state dict, a batch norm's running-statistics update,
/// an edit through PyTorch's `state_dict()`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stamp {
    ptr: usize,
    size: Vec<i64>,
    version: i64,
}

impl Stamp {
    pub(crate) fn of(t: &Tensor) -> Self {
        Stamp { ptr: t.data_ptr() as usize, size: t.size(), version: t.internal_version() }
    }
    /// Whether `t` is still what the stamp saw (checked on every inference forward:
    /// no allocation).
    fn matches(&self, t: &Tensor) -> bool {
        self.ptr == t.data_ptr() as usize && self.version == t.internal_version() && self.size == t.size()
    }
}

impl ConvBn {
    /// A convolution `conv_path` (cin → cout, k×k, with a bias if `bias`) followed by
    /// a batch norm at `bn_path` (none if `bn_path` is None).
    pub fn new(conv_path: &nn::Path, bn_path: Option<&nn::Path>, (cin, cout, k): (i64, i64, i64), bias: bool, init: ConvInit) -> Self {
        let conv = match init {
            ConvInit::Default => Conv2d::new(conv_path, cin, cout, k, bias),
            ConvInit::KaimingNormal => Conv2d::new_kaiming_normal(conv_path, cin, cout, k, bias),
        };
        ConvBn { conv, bn: bn_path.map(|p| BatchNorm2d::new(p, cout)), folded: None }
    }

    /// Folds the batch norm's running statistics into the convolution (or takes the
    /// convolution as it is), channels-last: inference then runs one convolution. The
    /// folded form is used only while the tensors it came from are unchanged (their
    /// stamps: data pointer, shape, libtorch's version counter); after any write to
    /// them the layer runs the plain path, from the current weights, until folded again.
    pub fn fold(&mut self) {
        let f = match &self.bn {
            Some(bn) => FoldedConv::new(&self.conv, bn),
            None => FoldedConv::plain(&self.conv),
        };
        self.folded = Some((f, self.stamps()));
    }

    /// Every tensor the folded form is computed from.
    fn sources(&self) -> impl Iterator<Item = &Tensor> {
        let bn = self.bn.iter().flat_map(|bn| [&bn.weight, &bn.bias, &bn.running_mean, &bn.running_var]);
        std::iter::once(&self.conv.weight).chain(self.conv.bias.as_ref()).chain(bn)
    }

    fn stamps(&self) -> Vec<Stamp> {
        self.sources().map(Stamp::of).collect()
    }

    /// The folded form, if there is one and it still matches the weights.
    fn fresh_folded(&self) -> Option<&FoldedConv> {
        let (f, stamps) = self.folded.as_ref()?;
        // The sources are fixed per layer, so the counts always agree.
        stamps.iter().zip(self.sources()).all(|(s, t)| s.matches(t)).then_some(f)
    }

    /// Drops the folded form (back to convolution, then batch norm).
    pub fn unfold(&mut self) {
        self.folded = None;
    }

    /// The layer on `x`. `train`: batch statistics (and running-statistics updates) in
    /// the batch norm; otherwise running statistics, through the folded convolution
    /// when there is one.
    pub fn forward(&self, x: &Tensor, c: ConvCall, train: bool) -> Tensor {
        let _fp32 = c.fp32.then(|| crate::device::Autocast::suspend(x.device()));
        let x = if c.fp32 { x.to_kind(tch::Kind::Float) } else { x.shallow_clone() };
        let y = match (train, self.fresh_folded()) {
            (false, Some(f)) => f.forward(&x, c.stride, c.padding, c.dilation),
            _ => {
                let y = self.conv.forward(&x, c.stride, c.padding, c.dilation);
                match &self.bn {
                    Some(bn) => bn.forward(&y, train),
                    None => y,
                }
            }
        };
        if c.relu {
            y.relu()
        } else {
            y
        }
    }

    /// The layer as one convolution's (weight, bias) with the batch norm folded in
    /// (f32, NCHW), for export.
    pub(crate) fn folded_weights(&self) -> (Tensor, Option<Tensor>) {
        match &self.bn {
            Some(bn) => {
                let (w, b) = fold_bn(&self.conv, bn);
                (w, Some(b))
            }
            None => (self.conv.weight.shallow_clone(), self.conv.bias.as_ref().map(|b| b.shallow_clone())),
        }
    }
}

#[derive(Debug)]
/// A fully connected layer.
pub struct Linear {
    /// (out, in).
    pub weight: Tensor,
    /// (out), if any.
    pub bias: Option<Tensor>,
}

impl Linear {
    /// PyTorch's default (uniform) initialisation.
    pub fn new(p: &nn::Path, cin: i64, cout: i64, bias: bool) -> Self {
        let bound = 1.0 / (cin as f64).sqrt();
        Linear {
            weight: p.var("weight", &[cout, cin], nn::Init::Uniform { lo: -bound, up: bound }),
            bias: bias.then(|| p.var("bias", &[cout], nn::Init::Uniform { lo: -bound, up: bound })),
        }
    }

    /// x · Wᵀ + b.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, self.bias.as_ref())
    }
}

#[derive(Debug)]
/// Layer normalisation over the last dimension.
pub struct LayerNorm {
    /// Scale.
    pub weight: Tensor,
    /// Shift.
    pub bias: Tensor,
}

impl LayerNorm {
    /// Weight 1, bias 0.
    pub fn new(p: &nn::Path, c: i64) -> Self {
        LayerNorm { weight: p.var("weight", &[c], nn::Init::Const(1.0)), bias: p.var("bias", &[c], nn::Init::Const(0.0)) }
    }

    /// The normalisation (eps 1e-5).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let c = *x.size().last().unwrap();
        x.layer_norm([c], Some(&self.weight), Some(&self.bias), 1e-5, true)
    }
}
