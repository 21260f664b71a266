//! CLIP's "modified ResNet" image tower (RN50, RN101, RN50x4, ...), with the FAMix
//! reference's dilation rule for output strides 8/16/32 and a staged forward
//! (stem+layer1, layer2..4, attention pool) so style mining and mixing can work on
//! layer1 features in between.

use std::collections::{BTreeSet, HashMap};

use crate::error::{bail, fail, format_err, Error, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use crate::nn::onnx::Graph;
use crate::nn::ops::{Eager, Ops};
use crate::nn::{ConvBn, ConvCall, ConvInit, Linear};

/// Output stride of the backbone (input size / layer4 size).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "i64", try_from = "i64")]
pub enum OutputStride {
    /// Output stride 8: layers 3 and 4 dilated.
    Os8,
    /// Output stride 16: layer4 dilated (the reference's default).
    Os16,
    /// Output stride 32: no dilation (CLIP's own network).
    Os32,
}

impl OutputStride {
    /// 8, 16 or 32; other values are an error.
    pub fn from_int(v: i64) -> Result<Self> {
        match v {
            8 => Ok(OutputStride::Os8),
            16 => Ok(OutputStride::Os16),
            32 => Ok(OutputStride::Os32),
            _ => fail!(InvalidSetting, "output_stride", "output stride must be 8, 16 or 32 (got {v})"),
        }
    }
    /// 8, 16 or 32.
    pub fn value(self) -> i64 {
        match self {
            OutputStride::Os8 => 8,
            OutputStride::Os16 => 16,
            OutputStride::Os32 => 32,
        }
    }
    /// torchvision's `replace_stride_with_dilation` for layer2..4.
    fn dilate(self) -> [bool; 3] {
        match self {
            OutputStride::Os8 => [false, true, true],
            OutputStride::Os16 => [false, false, true],
            OutputStride::Os32 => [false, false, false],
        }
    }
}

impl From<OutputStride> for i64 {
    fn from(o: OutputStride) -> i64 {
        o.value()
    }
}

impl TryFrom<i64> for OutputStride {
    type Error = crate::error::Error;
    fn try_from(v: i64) -> Result<Self> {
        OutputStride::from_int(v)
    }
}

/// The image tower's architecture, as CLIP's `build_model` infers it from shapes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResNetConfig {
    /// Bottleneck blocks per stage (RN50: `[3, 4, 6, 3]`).
    pub layers: [i64; 4],
    /// Stem/stage base width (64 for RN50/RN101).
    pub width: i64,
    /// Attention-pool output (CLIP embedding) size; None when the checkpoint has no
    /// attention pool (segmenter checkpoints).
    pub output_dim: Option<i64>,
    /// Attention heads of the attention pool (width · 32 / 64).
    pub heads: i64,
    /// The CLIP input resolution (224 for RN50); the attention pool's grid is this / 32.
    pub input_resolution: i64,
}

impl ResNetConfig {
    /// OpenAI CLIP RN50's image tower.
    pub fn rn50() -> Self {
        ResNetConfig { layers: [3, 4, 6, 3], width: 64, output_dim: Some(1024), heads: 32, input_resolution: 224 }
    }
    /// OpenAI CLIP RN101's image tower.
    pub fn rn101() -> Self {
        ResNetConfig { layers: [3, 4, 23, 3], width: 64, output_dim: Some(512), heads: 32, input_resolution: 224 }
    }
    /// famix's tiny image tower (the demo, `bench --arch tiny`, tests): the same
    /// structure at width 16, [1, 1, 2, 2] blocks, a 64-wide embedding.
    pub fn tiny() -> Self {
        ResNetConfig { layers: [1, 1, 2, 2], width: 16, output_dim: Some(64), heads: 8, input_resolution: 224 }
    }
    /// Channels of layer1's output (the style-mixing features).
    pub fn low_level_channels(&self) -> i64 {
        self.width * 4
    }
    /// Channels of layer4's output.
    pub(crate) fn high_level_channels(&self) -> i64 {
        self.width * 32
    }

    /// Infers the architecture from a state dict's keys under `prefix` (e.g. "visual."
    /// for CLIP checkpoints, "backbone." for segmenters), exactly as CLIP's loader does.
    /// Sizes beyond any CLIP's (RN50x64: width 128, embedding 1024, 14² grid) by far are
    /// refused before anything is allocated from them: a crafted file with an empty
    /// tensor of a huge shape cannot make famix build a huge network.
    pub(crate) fn infer(weights: &HashMap<String, Tensor>, prefix: &str) -> Result<Self> {
        let mut layers = [0i64; 4];
        for (b, slot) in layers.iter_mut().enumerate() {
            let lp = format!("{prefix}layer{}.", b + 1);
            let blocks: BTreeSet<&str> =
                weights.keys().filter_map(|k| k.strip_prefix(&lp)).filter_map(|rest| rest.split('.').next()).collect();
            *slot = blocks.len() as i64;
        }
        if layers.contains(&0) {
            bail!("no CLIP ResNet image tower under '{prefix}' (found blocks per stage {layers:?}); ViT CLIP models are not supported");
        }
        // CLIP reads the width from layer1.0.conv1; the stem's conv3 has the same width
        // and lets a checkpoint with that one key damaged still get a full key report.
        let width = weights
            .get(&format!("{prefix}layer1.0.conv1.weight"))
            .or_else(|| weights.get(&format!("{prefix}conv3.weight")))
            .ok_or_else(|| format_err!("missing {prefix}layer1.0.conv1.weight"))?
            .size()
            .first()
            .copied()
            .filter(|&w| (1..=MAX_WIDTH).contains(&w))
            .ok_or_else(|| format_err!("{prefix}layer1.0.conv1.weight's width is not in 1..={MAX_WIDTH}"))?;
        let (output_dim, input_resolution) = match weights.get(&format!("{prefix}attnpool.positional_embedding")) {
            Some(pe) => {
                let n = pe.size().first().copied().unwrap_or(0);
                if n < 2 {
                    bail!("{prefix}attnpool.positional_embedding has {n} rows");
                }
                let grid = (((n - 1) as f64).sqrt()).round() as i64;
                if grid * grid + 1 != n || grid > MAX_GRID {
                    bail!("{prefix}attnpool.positional_embedding has {n} rows, not a square grid (at most {MAX_GRID}²) + 1");
                }
                let out = weights
                    .get(&format!("{prefix}attnpool.c_proj.weight"))
                    .ok_or_else(|| format_err!("missing {prefix}attnpool.c_proj.weight"))?
                    .size()
                    .first()
                    .copied()
                    .unwrap_or(0);
                if !(1..=MAX_EMBED).contains(&out) {
                    bail!("{prefix}attnpool.c_proj.weight's output size {out} is not in 1..={MAX_EMBED}");
                }
                (Some(out), grid * 32)
            }
            None => (None, 224),
        };
        Ok(ResNetConfig { layers, width, output_dim, heads: (width * 32 / 64).max(1), input_resolution })
    }
}

/// The largest stem width [`ResNetConfig::infer`] accepts.
const MAX_WIDTH: i64 = 1024;
/// The largest attention-pool grid side it accepts.
const MAX_GRID: i64 = 128;
/// The largest embedding size it accepts.
const MAX_EMBED: i64 = 16384;

#[derive(Debug)]
/// CLIP's bottleneck block (anti-aliased: the stride is an average pool after the 3×3 convolution).
pub struct Bottleneck {
    conv1: ConvBn,
    conv2: ConvBn,
    conv3: ConvBn,
    /// Average pool (when strided), 1×1 convolution and batch norm on the shortcut.
    downsample: Option<ConvBn>,
    /// The stage's nominal stride (2 for layer2..4); whether it applies depends on the
    /// output stride, see `ModifiedResNet::set_output_stride`.
    stride: i64,
    dilation: i64,
}

impl Bottleneck {
    fn new(p: &nn::Path, inplanes: i64, planes: i64, has_stride: bool) -> Self {
        let has_down = has_stride || inplanes != planes * 4;
        let layer = |c: &str, b: &str, shape: (i64, i64, i64)| ConvBn::new(&(p / c), Some(&(p / b)), shape, false, ConvInit::Default);
        Bottleneck {
            conv1: layer("conv1", "bn1", (inplanes, planes, 1)),
            conv2: layer("conv2", "bn2", (planes, planes, 3)),
            conv3: layer("conv3", "bn3", (planes, planes * 4, 1)),
            // Key names "0"/"1" as CLIP's Sequential(("-1", AvgPool), ("0", conv), ("1", bn)).
            downsample: has_down.then(|| {
                let d = p / "downsample";
                ConvBn::new(&(&d / "0"), Some(&(&d / "1")), (inplanes, planes * 4, 1), false, ConvInit::Default)
            }),
            stride: 1,
            dilation: 1,
        }
    }

    fn layers_mut(&mut self) -> impl Iterator<Item = &mut ConvBn> {
        [&mut self.conv1, &mut self.conv2, &mut self.conv3].into_iter().chain(self.downsample.as_mut())
    }

    /// The block, written once for every backend: 1×1, 3×3 (dilated), average pool
    /// when strided, 1×1 to 4× the width; the shortcut pooled and projected when the
    /// shape changes; add; ReLU.
    pub fn run<O: Ops>(&self, o: &mut O, x: &O::V) -> O::V {
        let d = self.dilation;
        let out = o.conv(x, &self.conv1, ConvCall::relu(0, 1));
        let mut out = o.conv(&out, &self.conv2, ConvCall::relu(d, d));
        if self.stride > 1 {
            out = o.avg_pool(&out, self.stride);
        }
        let out = o.conv(&out, &self.conv3, ConvCall::linear());
        let identity = match &self.downsample {
            Some(down) => {
                let x = if self.stride > 1 { o.avg_pool(x, self.stride) } else { o.same(x) };
                o.conv(&x, down, ConvCall::linear())
            }
            None => o.same(x),
        };
        o.add_relu(&out, &identity)
    }

    /// The block on `x`; `train` uses batch statistics in its batch norms.
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        self.run(&mut Eager { train }, x)
    }
}

/// CLIP's attention pooling: the mean token queries all spatial tokens (plus itself)
/// through one multi-head attention; the output is the image embedding.
#[derive(Debug)]
pub struct AttentionPool2d {
    /// (tokens + 1, embed) positional embedding.
    pub positional_embedding: Tensor,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    c_proj: Linear,
    heads: i64,
}

impl AttentionPool2d {
    fn new(p: &nn::Path, grid: i64, embed_dim: i64, heads: i64, output_dim: i64) -> Self {
        AttentionPool2d {
            positional_embedding: p.var(
                "positional_embedding",
                &[grid * grid + 1, embed_dim],
                nn::Init::Randn { mean: 0.0, stdev: 1.0 / (embed_dim as f64).sqrt() },
            ),
            k_proj: Linear::new(&(p / "k_proj"), embed_dim, embed_dim, true),
            q_proj: Linear::new(&(p / "q_proj"), embed_dim, embed_dim, true),
            v_proj: Linear::new(&(p / "v_proj"), embed_dim, embed_dim, true),
            c_proj: Linear::new(&(p / "c_proj"), embed_dim, output_dim, true),
            heads,
        }
    }

    /// (N, C, H, W) layer4 features → (N, output_dim). H·W + 1 must equal the
    /// positional embedding's length (7×7 for 224-pixel CLIP inputs).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = x.size4()?;
        let len = self.positional_embedding.size()[0];
        if h * w + 1 != len {
            let g = ((len - 1) as f64).sqrt() as i64;
            let problem = format!("the attention pool expects a {g}x{g} layer4 grid (images of {r}x{r}), got {h}x{w}", r = g * 32);
            return Err(Error::invalid_input("images", problem));
        }
        let x = x.flatten(2, 3).permute([2, 0, 1]); // (HW, N, C)
        let x = Tensor::cat(&[x.mean_dim(0, true, Kind::Float), x], 0);
        let kind = x.kind();
        let x = x + self.positional_embedding.unsqueeze(1).to_kind(kind);
        let hd = c / self.heads;
        // Only the mean token's output is used, so only it is projected as a query.
        let q = self.q_proj.forward(&x.narrow(0, 0, 1)).view([1, n, self.heads, hd]).permute([1, 2, 0, 3]);
        let k = self.k_proj.forward(&x).view([len, n, self.heads, hd]).permute([1, 2, 0, 3]);
        let v = self.v_proj.forward(&x).view([len, n, self.heads, hd]).permute([1, 2, 0, 3]);
        let o = Tensor::scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, 0.0, false, None::<f64>, false);
        let o = o.permute([2, 0, 1, 3]).reshape([1, n, c]);
        Ok(self.c_proj.forward(&o).squeeze_dim(0))
    }
}

/// The image tower. Parameter names follow CLIP (`conv1.weight`, `layer1.0.bn1.running_mean`, ...).
#[derive(Debug)]
pub struct ModifiedResNet {
    /// The stem's three convolutions (`conv1`/`bn1` .. `conv3`/`bn3`).
    stem: [ConvBn; 3],
    /// The blocks of layer1..layer4.
    pub layers: [Vec<Bottleneck>; 4],
    /// CLIP's attention pool (absent in segmenters).
    pub attnpool: Option<AttentionPool2d>,
    /// The architecture.
    pub config: ResNetConfig,
    output_stride: OutputStride,
}

impl ModifiedResNet {
    /// Builds the tower under `p`; the attention pool is created when `config.output_dim`
    /// is set and `with_attnpool` is true.
    pub fn new(p: &nn::Path, config: &ResNetConfig, with_attnpool: bool, os: OutputStride) -> Self {
        let w = config.width;
        let mut inplanes = w;
        let mut make = |idx: usize, planes: i64, blocks: i64, stride: i64| -> Vec<Bottleneck> {
            let lp = p / format!("layer{}", idx + 1);
            (0..blocks)
                .map(|b| {
                    let blk = Bottleneck::new(&(&lp / b), inplanes, planes, b == 0 && stride > 1);
                    inplanes = planes * 4;
                    blk
                })
                .collect()
        };
        let layers = [
            make(0, w, config.layers[0], 1),
            make(1, w * 2, config.layers[1], 2),
            make(2, w * 4, config.layers[2], 2),
            make(3, w * 8, config.layers[3], 2),
        ];
        let attnpool = match (with_attnpool, config.output_dim) {
            (true, Some(out)) => Some(AttentionPool2d::new(&(p / "attnpool"), config.input_resolution / 32, w * 32, config.heads, out)),
            _ => None,
        };
        let stem_layer = |i: usize, cin: i64, cout: i64| {
            ConvBn::new(&(p / format!("conv{i}")), Some(&(p / format!("bn{i}"))), (cin, cout, 3), false, ConvInit::Default)
        };
        let mut net = ModifiedResNet {
            stem: [stem_layer(1, 3, w / 2), stem_layer(2, w / 2, w / 2), stem_layer(3, w / 2, w)],
            layers,
            attnpool,
            config: config.clone(),
            output_stride: os,
        };
        net.set_output_stride(os);
        net
    }

    /// The current output stride.
    pub fn output_stride(&self) -> OutputStride {
        self.output_stride
    }

    /// Re-plans strides and dilations (weights are unchanged). The reference's rule:
    /// in a dilated stage the first block keeps dilation 1 (it would have carried the
    /// stride), middle blocks use the previous stage's dilation, the last the new one.
    pub fn set_output_stride(&mut self, os: OutputStride) {
        self.output_stride = os;
        let dilate = os.dilate();
        let mut dilation = 1;
        for (idx, layer) in self.layers.iter_mut().enumerate() {
            let mut stride = if idx == 0 { 1 } else { 2 };
            let previous = dilation;
            if idx > 0 && dilate[idx - 1] {
                dilation *= stride;
                stride = 1;
            }
            let n = layer.len();
            for (b, blk) in layer.iter_mut().enumerate() {
                blk.stride = if b == 0 { stride } else { 1 };
                blk.dilation = if b == 0 {
                    1
                } else if b + 1 == n {
                    dilation
                } else {
                    previous
                };
            }
        }
    }

    /// The inference fast path: folds every batch norm into its convolution (eval-mode
    /// statistics, so forwards with `train = false` use the folded weights; training
    /// forwards are unchanged). Call again after the weights change; [`Self::unfold`]
    /// drops the folded copies.
    pub fn fold(&mut self) {
        self.fold_where(true, &|_, _| true);
    }

    /// Folds the stem (if `stem`) and the blocks for which `block(stage, index)` holds:
    /// for training, the frozen ones (their weights and statistics never change).
    pub(crate) fn fold_where(&mut self, stem: bool, block: &dyn Fn(usize, usize) -> bool) {
        if stem {
            self.stem.iter_mut().for_each(ConvBn::fold);
        }
        for (s, layer) in self.layers.iter_mut().enumerate() {
            for (b, blk) in layer.iter_mut().enumerate() {
                if block(s, b) {
                    blk.layers_mut().for_each(ConvBn::fold);
                }
            }
        }
    }

    /// Back to the plain path (batch norms as separate ops).
    pub fn unfold(&mut self) {
        self.stem.iter_mut().for_each(ConvBn::unfold);
        self.layers.iter_mut().flatten().for_each(|b| b.layers_mut().for_each(ConvBn::unfold));
    }

    /// The stem, written once for every backend: three 3×3 convolutions (the first
    /// strided), each with batch norm and ReLU, then a 2×2 average pool: stride 4.
    pub(crate) fn run_stem<O: Ops>(&self, o: &mut O, x: &O::V) -> O::V {
        let x = o.conv(x, &self.stem[0], ConvCall { stride: 2, ..ConvCall::relu(1, 1) });
        let x = o.conv(&x, &self.stem[1], ConvCall::relu(1, 1));
        let x = o.conv(&x, &self.stem[2], ConvCall::relu(1, 1));
        o.avg_pool(&x, 2)
    }

    /// The stem on `x`.
    pub(crate) fn forward_stem(&self, x: &Tensor, train: bool) -> Tensor {
        self.run_stem(&mut Eager { train }, x)
    }

    /// Runs stage `idx` (0-based: 0 = layer1); `train(block)` says which blocks use
    /// batch statistics.
    pub(crate) fn stage(&self, idx: usize, x: &Tensor, train: &dyn Fn(usize, usize) -> bool) -> Tensor {
        let mut x = x.shallow_clone();
        for (b, blk) in self.layers[idx].iter().enumerate() {
            x = blk.forward(&x, train(idx, b));
        }
        x
    }

    /// Stem + layer1: the low-level features (stride 4, `width*4` channels).
    pub fn forward_low(&self, x: &Tensor, train: bool) -> Tensor {
        let x = self.forward_stem(x, train);
        self.stage(0, &x, &|_, _| train)
    }

    /// Stem + layer1 and layer4 as ONNX nodes on value `x` (eval mode): (low, high).
    pub fn export(&self, g: &mut Graph, x: &str) -> (String, String) {
        let mut x = self.run_stem(g, &x.to_string());
        let mut low = String::new();
        for (idx, layer) in self.layers.iter().enumerate() {
            for blk in layer {
                x = blk.run(g, &x);
            }
            if idx == 0 {
                low = x.clone();
            }
        }
        (low, x)
    }

    /// layer2..layer4 from layer1 features.
    pub fn forward_high(&self, low: &Tensor, train: &dyn Fn(usize, usize) -> bool) -> Tensor {
        let mut x = low.shallow_clone();
        for idx in 1..4 {
            x = self.stage(idx, &x, train);
        }
        x
    }

    /// layer4 features with every batch norm in train mode (`train`: batch
    /// statistics, running-statistics updates) or eval mode.
    pub(crate) fn forward_all(&self, x: &Tensor, train: bool) -> Tensor {
        let low = self.forward_low(x, train);
        self.forward_high(&low, &|_, _| train)
    }

    /// The attention-pooled CLIP image embedding of layer4 features.
    pub(crate) fn embed_layer4(&self, layer4: &Tensor) -> Result<Tensor> {
        self.attnpool
            .as_ref()
            .ok_or_else(|| Error::incompatible("clip", "this image tower has no attention pool (segmenter weights cannot embed images)"))?
            .forward(layer4)
    }

    /// Full CLIP image encoding (at the tower's output stride; CLIP uses 32).
    /// `x` must be (N, 3, R, R) float32 images, R the tower's input resolution.
    pub fn encode(&self, x: &Tensor) -> Result<Tensor> {
        let r = self.config.input_resolution;
        let size = x.size();
        if size.len() != 4 || size[1..] != [3, r, r] || x.kind() != Kind::Float {
            let problem = format!("expected (N, 3, {r}, {r}) float32 images, got {:?} {:?}", x.kind(), size);
            return Err(Error::invalid_input("images", problem));
        }
        self.embed_layer4(&self.forward_all(x, false))
    }
}
