//! The operations famix's network blocks are made of, as a small backend trait, so each
//! block (the ResNet stem, the bottleneck, the DeepLab head) is written once and runs
//! two ways: eagerly on tensors ([`Eager`], training and inference, folded or not) or
//! as nodes of an ONNX graph ([`super::onnx::Graph`], export). The maths stays visible
//! in the blocks; only how each step is carried out differs, and nothing a block does
//! can be missing from its export.
//!
//! Each eager operation is one plain libtorch call, the one PyTorch's reference makes
//! (e.g. the pooled ASPP branch is upsampled with `upsample_bilinear2d`, which the ONNX
//! backend writes as a broadcast); the parity tests against PyTorch's numbers pin the
//! eager path, and the export tests pin the graph to it.

use tch::Tensor;

use super::{ConvBn, ConvCall};

/// A backend: values of type `V` (tensors, or ONNX value names) and the operations
/// blocks use.
pub trait Ops {
    /// A value flowing through the block.
    type V;
    /// `layer` with `call`'s geometry (its batch norm applied or folded in), then ReLU
    /// if `call.relu`.
    fn conv(&mut self, x: &Self::V, layer: &ConvBn, call: ConvCall) -> Self::V;
    /// Average pooling, kernel = stride = `k`, no padding (CLIP's anti-aliasing pool).
    fn avg_pool(&mut self, x: &Self::V, k: i64) -> Self::V;
    /// `relu(a + b)` (a residual connection).
    fn add_relu(&mut self, a: &Self::V, b: &Self::V) -> Self::V;
    /// Global average pooling to (N, C, 1, 1).
    fn global_pool(&mut self, x: &Self::V) -> Self::V;
    /// A (N, C, 1, 1) value spread over the spatial size of `like`.
    fn broadcast_like(&mut self, x: &Self::V, like: &Self::V) -> Self::V;
    /// Channel concatenation.
    fn concat(&mut self, xs: &[&Self::V]) -> Self::V;
    /// Bilinear resize to the spatial size of `like` (`align_corners = false`).
    fn resize_like(&mut self, x: &Self::V, like: &Self::V) -> Self::V;
    /// Dropout with rate `p` (training only).
    fn dropout(&mut self, x: &Self::V, p: f64) -> Self::V;
    /// The same value again (a residual branch's input).
    fn same(&mut self, x: &Self::V) -> Self::V;
}

/// Eager execution on tensors. `train`: batch norms use batch statistics (and update
/// their running statistics) and dropout is active; otherwise running statistics (the
/// folded convolutions when a layer has them) and no dropout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Eager {
    /// Training mode.
    pub train: bool,
}

impl Ops for Eager {
    type V = Tensor;
    fn conv(&mut self, x: &Tensor, layer: &ConvBn, call: ConvCall) -> Tensor {
        layer.forward(x, call, self.train)
    }
    fn avg_pool(&mut self, x: &Tensor, k: i64) -> Tensor {
        x.avg_pool2d([k, k], [k, k], [0, 0], false, true, None::<i64>)
    }
    fn add_relu(&mut self, a: &Tensor, b: &Tensor) -> Tensor {
        (a + b).relu()
    }
    fn global_pool(&mut self, x: &Tensor) -> Tensor {
        x.adaptive_avg_pool2d([1, 1])
    }
    fn broadcast_like(&mut self, x: &Tensor, like: &Tensor) -> Tensor {
        self.resize_like(x, like)
    }
    fn concat(&mut self, xs: &[&Tensor]) -> Tensor {
        Tensor::cat(xs, 1)
    }
    fn resize_like(&mut self, x: &Tensor, like: &Tensor) -> Tensor {
        let s = like.size();
        x.upsample_bilinear2d([s[2], s[3]], false, None, None)
    }
    fn dropout(&mut self, x: &Tensor, p: f64) -> Tensor {
        if self.train && p > 0.0 {
            x.dropout(p, true)
        } else {
            x.shallow_clone()
        }
    }
    fn same(&mut self, x: &Tensor) -> Tensor {
        x.shallow_clone()
    }
}
