//! DeepLabv3+ head (docs/src/design.md §1): 48-channel low-level projection of layer1, ASPP on
//! layer4 (1×1, three dilated 3×3, image pooling; 256 channels), fuse 304 → 256,
//! classify. Names follow the reference (`classifier.aspp.convs.1.0.weight`, ...).

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use crate::clip::OutputStride;
use crate::nn::onnx::Graph;
use crate::nn::ops::{Eager, Ops};
use crate::nn::{ConvBn, ConvCall, ConvInit};

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
pub(crate) fn aspp_rates(os: OutputStride) -> [i64; 3] {
    match os {
        OutputStride::Os8 => [12, 24, 36],
        _ => [6, 12, 18],
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
    /// The 3×3 convolution over [low-level projection, upsampled ASPP] (the reference's
    /// `classifier.classifier.0/1`).
    decoder: ConvBn,
    /// The final 1×1 convolution to class logits (with a bias, no batch norm).
    classify: ConvBn,
    rates: [i64; 3],
}

impl DeepLabHead {
    /// A head with Kaiming-initialised convolutions under `p`.
    pub fn new(p: &nn::Path, low_channels: i64, high_channels: i64, c: &HeadConfig, os: OutputStride) -> Self {
        let a = p / "aspp";
        let convs = &a / "convs";
        let ch = c.aspp_channels;
        let clf = p / "classifier";
        // Each layer is `Sequential(conv, bn, relu)` in the reference: conv "0", bn "1"
        // (the pooling branch has its AdaptiveAvgPool at "0").
        let layer = |seq: &nn::Path, conv: &str, bn: &str, shape| {
            ConvBn::new(&(seq / conv), Some(&(seq / bn)), shape, false, ConvInit::KaimingNormal)
        };
        DeepLabHead {
            project: layer(&(p / "project"), "0", "1", (low_channels, c.low_proj_channels, 1)),
            aspp_1x1: layer(&(&convs / "0"), "0", "1", (high_channels, ch, 1)),
            aspp_dilated: [1, 2, 3].map(|i| layer(&(&convs / i), "0", "1", (high_channels, ch, 3))),
            aspp_pool: layer(&(&convs / "4"), "1", "2", (high_channels, ch, 1)),
            aspp_project: layer(&(&a / "project"), "0", "1", (5 * ch, ch, 1)),
            decoder: layer(&clf, "0", "1", (ch + c.low_proj_channels, ch, 3)),
            classify: ConvBn::new(&(&clf / "3"), None, (ch, c.num_classes, 1), true, ConvInit::KaimingNormal),
            rates: aspp_rates(os),
        }
    }

    fn layers_mut(&mut self) -> impl Iterator<Item = &mut ConvBn> {
        [&mut self.project, &mut self.aspp_1x1, &mut self.aspp_pool, &mut self.aspp_project, &mut self.decoder, &mut self.classify]
            .into_iter()
            .chain(self.aspp_dilated.iter_mut())
    }

    /// Folds every batch norm into its convolution for inference (see
    /// [`crate::clip::ModifiedResNet::fold`]).
    pub fn fold(&mut self) {
        self.layers_mut().for_each(ConvBn::fold);
    }

    /// Back to the plain path.
    pub fn unfold(&mut self) {
        self.layers_mut().for_each(ConvBn::unfold);
    }

    /// Switches the ASPP rates to those of `os`.
    pub fn set_output_stride(&mut self, os: OutputStride) {
        self.rates = aspp_rates(os);
    }

    /// The head, written once for every backend: project layer1 to the low-level
    /// width; ASPP on layer4 (1×1, three dilated 3×3, the image-pooling branch spread
    /// back over the map); project the concatenation, dropout; upsample to layer1's
    /// size; concatenate with the low-level projection; 3×3; classify (in fp32).
    pub fn run<O: Ops>(&self, o: &mut O, low: &O::V, high: &O::V, dropout: f64) -> O::V {
        let low = o.conv(low, &self.project, ConvCall::relu(0, 1));
        let first = o.conv(high, &self.aspp_1x1, ConvCall::relu(0, 1));
        let mut branches = vec![];
        for (layer, &r) in self.aspp_dilated.iter().zip(&self.rates) {
            branches.push(o.conv(high, layer, ConvCall::relu(r, r)));
        }
        let pooled = o.global_pool(high);
        let pooled = o.conv(&pooled, &self.aspp_pool, ConvCall::relu(0, 1));
        let pooled = o.broadcast_like(&pooled, &first);
        let all: Vec<&O::V> = std::iter::once(&first).chain(&branches).chain(std::iter::once(&pooled)).collect();
        let cat = o.concat(&all);
        let x = o.conv(&cat, &self.aspp_project, ConvCall::relu(0, 1));
        let x = o.dropout(&x, dropout);
        let x = o.resize_like(&x, &low);
        let cat = o.concat(&[&low, &x]);
        let x = o.conv(&cat, &self.decoder, ConvCall::relu(1, 1));
        o.conv(&x, &self.classify, ConvCall { fp32: true, ..ConvCall::linear() })
    }

    /// Logits at the low-level (stride-4) resolution. `dropout` is the rate after the
    /// ASPP projection in training (the head's configuration lives in one place, the
    /// segmenter's [`HeadConfig`]).
    pub fn forward(&self, low: &Tensor, high: &Tensor, train: bool, dropout: f64) -> Tensor {
        self.run(&mut Eager { train }, low, high, dropout)
    }

    /// [`DeepLabHead::forward`] in eval mode as ONNX nodes.
    pub fn export(&self, g: &mut Graph, low: &str, high: &str) -> String {
        self.run(g, &low.to_string(), &high.to_string(), 0.0)
    }
}
