//! The inference API: load a segmenter, segment images.
//!
//! ```text
//! Segmenter::load(path, device)  →  Segmenter
//! seg.predict(&image, &opts)      →  Prediction { train_ids, logits? }
//! ```
//!
//! `predict` does its own preprocessing (u8 RGB → CLIP mean/std normalisation on the
//! device) and the test-time options of the reference's evaluation: a test scale
//! (resize the input by `s`, predict, resize the logits back with
//! align_corners=true) and the ensemble of scale 1 and scale `s`. Every famix
//! command that segments (`predict`, `eval`, `demo`, validation during `train`,
//! `bench`) goes through [`Segmenter::predict_ids`], the batched form.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::clip::OutputStride;
use crate::error::{Error, Result};
use crate::imageops::Image8;
use crate::model::checkpoint;
use crate::model::segmenter::{at_test_scale, Segmenter, SegmenterConfig};

/// The segmenter's input mean (RGB): CLIP's, because the backbone is CLIP's image tower.
pub const INPUT_MEAN: [f64; 3] = crate::clip::preprocess::CLIP_MEAN;
/// The segmenter's input standard deviation (RGB): CLIP's.
pub const INPUT_STD: [f64; 3] = crate::clip::preprocess::CLIP_STD;

/// Arithmetic precision of a forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit floats everywhere (the reference's precision).
    #[default]
    Fp32,
    /// bf16 autocast: convolutions and matrix products in bfloat16.
    Bf16,
}

impl Precision {
    /// "fp32" or "bf16".
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        }
    }
}
crate::names::named!(Precision, [Precision::Fp32, Precision::Bf16]);

impl std::str::FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "fp32" => Ok(Precision::Fp32),
            "bf16" => Ok(Precision::Bf16),
            other => Err(Error::invalid_setting("amp", format!("{other:?} is not fp32 or bf16"))),
        }
    }
}

/// Test-time options of [`Segmenter::predict`].
#[derive(Debug, Clone, PartialEq)]
pub struct PredictOptions {
    /// Test scale: the input is resized by this factor before the forward pass and
    /// the logits are resized back (1.0: no resize).
    pub scale: f64,
    /// Average the logits of scale 1 and `scale`.
    pub ensemble: bool,
    /// Arithmetic precision.
    pub precision: Precision,
    /// Also return the logits (N, classes, H, W), on the model's device.
    pub keep_logits: bool,
}

impl Default for PredictOptions {
    fn default() -> Self {
        PredictOptions { scale: 1.0, ensemble: false, precision: Precision::Fp32, keep_logits: false }
    }
}

impl PredictOptions {
    /// Checks the options: a finite scale in [0.05, 8].
    pub fn validate(&self) -> Result<()> {
        if !(self.scale.is_finite() && (0.05..=8.0).contains(&self.scale)) {
            return Err(Error::invalid_setting("scale", format!("{} is not in [0.05, 8]", self.scale)));
        }
        Ok(())
    }
}

/// One image's segmentation.
#[derive(Debug)]
pub struct Prediction {
    /// Train ids, one channel, the input's size.
    pub train_ids: Image8,
    /// (1, classes, H, W) logits when [`PredictOptions::keep_logits`] was set.
    pub logits: Option<Tensor>,
}

/// (N, 3, H, W) u8 RGB → f32 normalised with [`INPUT_MEAN`]/[`INPUT_STD`] on
/// `device` (the reference's `ToTensor` then `Normalize`).
pub fn normalize_u8(batch: &Tensor, device: Device) -> Tensor {
    crate::clip::preprocess::normalize_u8(batch, device)
}

impl Segmenter {
    /// Loads a famix checkpoint (`.safetensors` or its stem) or a reference FAMix
    /// `.pth`, with the output stride it was saved with (16 for `.pth` files), ready
    /// for inference: the fast path ([`Segmenter::fold`]) is on; `unfold()` for the
    /// plain one.
    pub fn load(path: impl AsRef<Path>, device: Device) -> Result<Segmenter> {
        let mut m = checkpoint::load(path.as_ref(), device, None)?.model;
        m.fold();
        Ok(m)
    }

    /// [`Segmenter::load`] at another output stride (8, 16 or 32: the dilation of
    /// the last stages changes, the weights do not).
    pub fn load_with_stride(path: impl AsRef<Path>, device: Device, output_stride: OutputStride) -> Result<Segmenter> {
        let mut m = checkpoint::load(path.as_ref(), device, Some(output_stride))?.model;
        m.fold();
        Ok(m)
    }

    /// Checks that a `width` × `height` image can go through the network at test
    /// `scale`: every stride-2 average pool needs two cells, so each side must reach
    /// the output stride after scaling.
    pub fn check_size(&self, width: i64, height: i64, scale: f64) -> Result<()> {
        self.config().check_size(width, height, scale)
    }

    /// Segments one RGB image.
    pub fn predict(&self, image: &Image8, opts: &PredictOptions) -> Result<Prediction> {
        if image.channels != 3 {
            return Err(Error::invalid_input("image", format!("predict needs an RGB image, got {} channels", image.channels)));
        }
        let x = image.to_tensor_u8().unsqueeze(0);
        let (ids, logits) = self.predict_ids(&x, opts)?;
        let train_ids = Image8::from_tensor_u8(&ids.get(0).to_kind(Kind::Uint8).to_device(Device::Cpu))?;
        Ok(Prediction { train_ids, logits })
    }

    /// Segments a batch of same-size RGB images: (N, 3, H, W) u8 on any device →
    /// (N, H, W) int64 train ids on the model's device, and the logits when asked.
    pub fn predict_ids(&self, images_u8: &Tensor, opts: &PredictOptions) -> Result<(Tensor, Option<Tensor>)> {
        opts.validate()?;
        let size = images_u8.size();
        if size.len() != 4 || size[1] != 3 || images_u8.kind() != Kind::Uint8 {
            let problem = format!("predict_ids needs (N, 3, H, W) u8 images, got {:?} {:?}", size, images_u8.kind());
            return Err(Error::invalid_input("images", problem));
        }
        self.check_size(size[3], size[2], opts.scale)?;
        let x = normalize_u8(images_u8, self.device());
        let _amp = crate::device::Autocast::new(self.device(), opts.precision == Precision::Bf16);
        let logits = self.logits(&x, opts.scale, opts.ensemble)?;
        let ids = logits.argmax(1, false);
        Ok((ids, opts.keep_logits.then_some(logits)))
    }

    /// Inference logits (N, K, H, W) of normalised images (N, 3, H, W) at `scale` (and
    /// averaged with scale 1 under `ensemble`), from the attached engine when there is
    /// one ([`Segmenter::set_engine`]), else libtorch ([`Segmenter::predict_logits`]):
    /// the graph every prediction entry point answers from.
    /// `x` is checked before libtorch sees it (shape, a floating type, each side large
    /// enough for the network at `scale`) and moved to the model's device as float32.
    pub fn logits(&self, x: &Tensor, scale: f64, ensemble: bool) -> Result<Tensor> {
        self.check_weights()?;
        PredictOptions { scale, ..Default::default() }.validate()?;
        let size = x.size();
        if size.len() != 4 || size[1] != 3 || !x.is_floating_point() {
            let problem = format!("logits need normalised (N, 3, H, W) float images, got {:?} {:?}", x.kind(), size);
            return Err(Error::invalid_input("images", problem));
        }
        self.check_size(size[3], size[2], scale)?;
        let x = &crate::device::upload(x, self.device()).to_kind(Kind::Float);
        match self.external() {
            Some(net) => tch::no_grad(|| at_test_scale(x, scale, ensemble, |x| net.logits(self, x))),
            None => Ok(self.predict_logits(x, scale, ensemble)),
        }
    }
}

impl SegmenterConfig {
    /// See [`Segmenter::check_size`] (the configuration alone decides it, so threads
    /// that prepare inputs can check without the model).
    pub fn check_size(&self, width: i64, height: i64, scale: f64) -> Result<()> {
        let min_side = self.output_stride.value();
        let side = (width.min(height) as f64 * scale.min(1.0)).floor() as i64;
        if side < min_side {
            return Err(Error::invalid_input(
                "image",
                format!("image of {width}x{height} is too small for the network at scale {scale} (each side needs at least {min_side} pixels at output stride {min_side})"),
            ));
        }
        Ok(())
    }
}
