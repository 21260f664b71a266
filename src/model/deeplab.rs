//! DeepLabv3+ head (docs/design.md §1): 48-channel low-level projection of layer1, ASPP on
//! layer4 (1×1, three dilated 3×3, image pooling; 256 channels), fuse 304 → 256,
//! classify. Names follow the reference (`classifier.aspp.convs.1.0.weight`, ...).

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use crate::clip::OutputStride;
use crate::error::Result;
use crate::export::graph::{Attr, Graph};
use crate::nn::{BatchNorm2d, Conv2d, FoldedConv};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// The head's shape.
pub struct HeadConfig {
    /// Output classes.
    pub num_classes: i64,
    /// ASPP / decoder width (256 in the reference).
    pub aspp_channels: i64,
    /// Low-level projection width (48 in the reference).
    pub low_proj_channels: i64,
    /// Dropout after the ASPP projection (0.1 in the reference).
    #[serde(default = "default_dropout")]
    pub dropout: f64,
}

fn default_dropout() -> f64 {
    0.1
}

impl HeadConfig {
    /// The reference's head: 256-wide ASPP/decoder, 48-wide low-level projection.
    pub fn reference(num_classes: i64) -> Self {
        HeadConfig { num_classes, aspp_channels: 256, low_proj_channels: 48, dropout: 0.1 }
    }
    /// The head paired with [`crate::clip::ResNetConfig::tiny`]: 64-wide ASPP, 16-wide projection.
    pub fn tiny(num_classes: i64) -> Self {
        HeadConfig { num_classes, aspp_channels: 64, low_proj_channels: 16, dropout: 0.1 }
    }
}

/// ASPP atrous rates for an output stride (the reference: 12/24/36 at OS8, else 6/12/18).
pub fn aspp_rates(os: OutputStride) -> [i64; 3] {
    match os {
        OutputStride::Os8 => [12, 24, 36],
        _ => [6, 12, 18],
    }
}

#[derive(Debug)]
struct ConvBn {
    conv: Conv2d,
    bn: BatchNorm2d,
    /// The pair folded into one convolution (inference fast path).
    folded: Option<FoldedConv>,
}

impl ConvBn {
    fn new(p: &nn::Path, conv_name: &str, bn_name: &str, cin: i64, cout: i64, k: i64) -> Self {
        let conv = Conv2d::new_kaiming_normal(&(p / conv_name), cin, cout, k, false);
        ConvBn { conv, bn: BatchNorm2d::new(&(p / bn_name), cout), folded: None }
    }
    fn forward(&self, x: &Tensor, padding: i64, dilation: i64, train: bool) -> Tensor {
        if let (false, Some(f)) = (train, &self.folded) {
            return f.forward(x, 1, padding, dilation).relu();
        }
        self.bn.forward(&self.conv.forward(x, 1, padding, dilation), train).relu()
    }
    fn export(&self, g: &mut Graph, x: &str, padding: i64, dilation: i64) -> Result<String> {
        g.conv(x, &self.conv, Some(&self.bn), (1, padding, dilation), true)
    }
}

#[derive(Debug)]
/// The DeepLabv3+ head.
pub struct DeepLabHead {
    project: ConvBn,
    aspp_1x1: ConvBn,
    aspp_dilated: [ConvBn; 3],
    aspp_pool: ConvBn,
    aspp_project: ConvBn,
    fuse: ConvBn,
    classify: Conv2d,
    rates: [i64; 3],
    /// The classifier in the fast path's form (channels-last weights).
    classify_fast: Option<FoldedConv>,
}

impl DeepLabHead {
    /// A head with Kaiming-initialised convolutions under `p`.
    pub fn new(p: &nn::Path, low_channels: i64, high_channels: i64, c: &HeadConfig, os: OutputStride) -> Self {
        let a = p / "aspp";
        let convs = &a / "convs";
        let ch = c.aspp_channels;
        let clf = p / "classifier";
        DeepLabHead {
            project: ConvBn::new(&(p / "project"), "0", "1", low_channels, c.low_proj_channels, 1),
            aspp_1x1: ConvBn::new(&(&convs / "0"), "0", "1", high_channels, ch, 1),
            aspp_dilated: [1, 2, 3].map(|i| ConvBn::new(&(&convs / i), "0", "1", high_channels, ch, 3)),
            aspp_pool: ConvBn::new(&(&convs / "4"), "1", "2", high_channels, ch, 1),
            aspp_project: ConvBn::new(&(&a / "project"), "0", "1", 5 * ch, ch, 1),
            fuse: ConvBn::new(&clf, "0", "1", ch + c.low_proj_channels, ch, 3),
            classify: Conv2d::new_kaiming_normal(&(&clf / "3"), ch, c.num_classes, 1, true),
            rates: aspp_rates(os),
            classify_fast: None,
        }
    }

    fn conv_bns(&mut self) -> impl Iterator<Item = &mut ConvBn> {
        [&mut self.project, &mut self.aspp_1x1, &mut self.aspp_pool, &mut self.aspp_project, &mut self.fuse]
            .into_iter()
            .chain(self.aspp_dilated.iter_mut())
    }

    /// Folds every batch norm into its convolution for inference (see
    /// [`crate::clip::ModifiedResNet::fuse`]).
    pub fn fuse(&mut self) {
        self.conv_bns().for_each(|c| c.folded = Some(FoldedConv::new(&c.conv, &c.bn)));
        self.classify_fast = Some(FoldedConv::plain(&self.classify));
    }

    /// Back to the plain path.
    pub fn unfuse(&mut self) {
        self.conv_bns().for_each(|c| c.folded = None);
        self.classify_fast = None;
    }

    /// Switches the ASPP rates to those of `os`.
    pub fn set_output_stride(&mut self, os: OutputStride) {
        self.rates = aspp_rates(os);
    }

    /// Logits at the low-level (stride-4) resolution. `dropout` is the rate after the
    /// ASPP projection in training (the head's configuration lives in one place, the
    /// segmenter's [`HeadConfig`]).
    pub fn forward(&self, low: &Tensor, high: &Tensor, train: bool, dropout: f64) -> Tensor {
        let low = self.project.forward(low, 0, 1, train);
        let (h, w) = (high.size()[2], high.size()[3]);
        let mut branches = vec![self.aspp_1x1.forward(high, 0, 1, train)];
        for (conv, &r) in self.aspp_dilated.iter().zip(&self.rates) {
            branches.push(conv.forward(high, r, r, train));
        }
        let pooled = self.aspp_pool.forward(&high.adaptive_avg_pool2d([1, 1]), 0, 1, train);
        branches.push(pooled.upsample_bilinear2d([h, w], false, None, None));
        let mut x = self.aspp_project.forward(&Tensor::cat(&branches, 1), 0, 1, train);
        if train && dropout > 0.0 {
            x = x.dropout(dropout, true);
        }
        let x = x.upsample_bilinear2d([low.size()[2], low.size()[3]], false, None, None);
        let x = self.fuse.forward(&Tensor::cat(&[low, x], 1), 1, 1, train);
        // The classifier (a 1×1 convolution, a small share of the work) runs in fp32
        // under bf16 autocast: it decides the argmax, where bf16 rounding of nearly
        // tied logits would flip classes.
        let _fp32 = crate::device::Autocast::suspend(x.device());
        let x = x.to_kind(tch::Kind::Float);
        match (train, &self.classify_fast) {
            (false, Some(f)) => f.forward(&x, 1, 0, 1),
            _ => self.classify.forward1(&x),
        }
    }

    /// [`DeepLabHead::forward`] in eval mode as ONNX nodes; the image-pooling branch is
    /// broadcast with `Expand` (bilinear upsampling of a 1×1 map is a broadcast).
    pub fn export(&self, g: &mut Graph, low: &str, high: &str) -> Result<String> {
        let low = self.project.export(g, low, 0, 1)?;
        let mut branches = vec![self.aspp_1x1.export(g, high, 0, 1)?];
        for (conv, &r) in self.aspp_dilated.iter().zip(&self.rates) {
            branches.push(conv.export(g, high, r, r)?);
        }
        let pooled = g.node("GlobalAveragePool", &[high], vec![]);
        let pooled = self.aspp_pool.export(g, &pooled, 0, 1)?;
        let shape = g.node("Shape", &[&branches[0]], vec![]);
        branches.push(g.node("Expand", &[&pooled, &shape], vec![]));
        let refs: Vec<&str> = branches.iter().map(String::as_str).collect();
        let cat = g.node("Concat", &refs, vec![("axis", Attr::Int(1))]);
        let x = self.aspp_project.export(g, &cat, 0, 1)?;
        let x = g.resize_like(&x, &low);
        let cat = g.node("Concat", &[&low, &x], vec![("axis", Attr::Int(1))]);
        let x = self.fuse.export(g, &cat, 1, 1)?;
        g.conv(&x, &self.classify, None, (1, 0, 1), false)
    }
}
