//! The few layers famix's models are made of, with PyTorch's parameter names
//! (`weight`, `bias`, `running_mean`, `running_var`) so state dicts map one to one.
//! Stride/padding/dilation are call arguments, not fields: the same weights serve a
//! backbone at several output strides.

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
    pub fn new_kaiming_normal(p: &nn::Path, cin: i64, cout: i64, k: i64, bias: bool) -> Self {
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

    /// Stride 1, no padding (1×1 convolutions).
    pub fn forward1(&self, x: &Tensor) -> Tensor {
        self.forward(x, 1, 0, 1)
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
pub struct FoldedConv {
    /// (out, in, k, k), channels-last.
    pub weight: Tensor,
    /// (out).
    pub bias: Tensor,
}

impl FoldedConv {
    /// Folds `bn` into `conv`.
    pub fn new(conv: &Conv2d, bn: &BatchNorm2d) -> Self {
        let (w, b) = fold_bn(conv, bn);
        FoldedConv { weight: channels_last(&w), bias: b }
    }

    /// A convolution without batch norm, in the same form (its bias or zeros).
    pub fn plain(conv: &Conv2d) -> Self {
        let w = conv.weight.detach();
        let bias = conv.bias.as_ref().map(|b| b.detach().copy()).unwrap_or_else(|| Tensor::zeros([w.size()[0]], (w.kind(), w.device())));
        FoldedConv { weight: channels_last(&w), bias }
    }

    /// The folded convolution with the given stride, padding and dilation.
    pub fn forward(&self, x: &Tensor, stride: i64, padding: i64, dilation: i64) -> Tensor {
        x.conv2d(&self.weight, Some(&self.bias), [stride, stride], [padding, padding], [dilation, dilation], 1)
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
