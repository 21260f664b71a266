//! Calibration for int8 inference (`famix calibrate`): the range of every value the
//! int8 graph quantises (`export::qdq`), measured by running the fp32 graph
//! in ONNX Runtime on a few images of the *source* domain and keeping each value's
//! minimum and maximum over all of them (ONNX Runtime's MinMax calibration). The
//! ranges are saved as JSON and turned into the int8 graph when a session is built
//! (`--int8 FILE`), so calibrating once serves every later run.
//!
//! Calibrate on training or validation images of the domain the model was trained on,
//! never on the domains it is tested on (that would tune the model on its test set).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::onnxruntime::{f32_input, ort_err, session_from};
use crate::error::{Error, Result};
use crate::export::qdq::ActivationRanges;
use crate::export::{to_onnx_observing, ExportOptions};
use crate::imageops::Image8;
use crate::model::Segmenter;
use crate::progress::{Progress, Unit};

/// What a calibration file says it is.
pub const FORMAT: &str = "famix-int8-calibration";

/// A saved calibration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Calibration {
    /// [`FORMAT`].
    pub format: String,
    /// 1.
    pub version: u32,
    /// The checkpoint calibrated (informational).
    pub checkpoint: String,
    /// How many images were seen.
    pub images: usize,
    /// The network calibrated: backbone, head and output stride ([`network`]); the
    /// ranges are positional and fit only this network.
    pub network: serde_json::Value,
    /// The ranges, in the graph's order.
    pub ranges: ActivationRanges,
    /// The file it was loaded from (for messages).
    #[serde(skip)]
    pub source: PathBuf,
}

/// What a calibration must match: the backbone, the head and the output stride.
pub fn network(model: &Segmenter) -> Result<serde_json::Value> {
    let c = model.config();
    Ok(serde_json::json!({ "backbone": c.backbone, "head": c.head, "output_stride": c.output_stride.value() }))
}

impl Calibration {
    /// Reads and checks a calibration file (every range finite, min ≤ max).
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::invalid_input(path, format!("{}: {e}", path.display())))?;
        let c: Calibration = serde_json::from_slice(&bytes)
            .map_err(|e| Error::invalid_input(path, format!("{}: not a famix int8 calibration: {e}", path.display())))?;
        if c.format != FORMAT || c.version != 1 {
            return Err(Error::invalid_input(
                path,
                format!("{}: format {:?} v{}, expected {FORMAT:?} v1", path.display(), c.format, c.version),
            ));
        }
        if let Some(r) = c.ranges.invalid() {
            return Err(Error::invalid_input(path, format!("{}: invalid activation range {r:?}", path.display())));
        }
        Ok(Calibration { source: path.to_path_buf(), ..c })
    }

    /// Fails unless it was made for `model`'s network.
    pub fn check_fits(&self, model: &Segmenter) -> Result<()> {
        if self.network != network(model)? {
            let p = &self.source;
            return Err(Error::incompatible(
                p,
                format!(
                    "{}: calibrated for another network or output stride ({}); calibrate this checkpoint with `famix calibrate`",
                    p.display(),
                    self.network
                ),
            ));
        }
        Ok(())
    }

    /// Writes it atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::io::atomic_write(path, &serde_json::to_vec_pretty(self)?)
    }
}

/// Runs `model`'s fp32 graph on every image (RGB files of any size the model takes)
/// and records each quantised value's range; `checkpoint` is stored as a label.
pub fn calibrate(model: &Segmenter, images: &[PathBuf], checkpoint: &str, progress: &dyn Progress) -> Result<Calibration> {
    if images.is_empty() {
        return Err(Error::invalid_setting("images", "no calibration images"));
    }
    let mut c = Calibrator::new(model)?;
    progress.start("calibrating int8 ranges", images.len() as u64, 0, Unit::Items);
    for path in images {
        if progress.cancelled() {
            return Err(Error::Cancelled { what: "calibration (nothing was written)".into() });
        }
        let img = Image8::open_rgb(path)?;
        model
            .check_size(img.width as i64, img.height as i64, 1.0)
            .map_err(|e| Error::invalid_input(path, format!("{}: {e}", path.display())))?;
        c.observe_u8(&img.to_tensor_u8().unsqueeze(0))?;
        progress.advance(1);
    }
    progress.finish();
    c.finish(model, checkpoint)
}

/// Accumulates ranges over images.
pub struct Calibrator {
    session: ort::session::Session,
    values: Vec<String>,
    ranges: Vec<[f32; 2]>,
    images: usize,
}

impl Calibrator {
    /// A session of `model`'s fp32 graph that also returns the observed values.
    pub fn new(model: &Segmenter) -> Result<Self> {
        let (bytes, values) = to_onnx_observing(model, &ExportOptions::default())?;
        let ranges = vec![[f32::INFINITY, f32::NEG_INFINITY]; values.len()];
        Ok(Calibrator { session: session_from(&bytes)?, values, ranges, images: 0 })
    }

    /// One forward of a uint8 RGB batch (N, 3, H, W); widens each value's range by
    /// what it holds.
    pub fn observe_u8(&mut self, batch: &Tensor) -> Result<()> {
        let x = crate::model::inference::normalize_u8(batch, Device::Cpu).to_kind(Kind::Float).contiguous();
        let input = f32_input(&x)?;
        let outputs = self.session.run(ort::inputs!["image" => input]).map_err(ort_err("run"))?;
        for (v, r) in self.values.iter().zip(self.ranges.iter_mut()) {
            let (_, t) = outputs[v.as_str()].try_extract_tensor::<f32>().map_err(ort_err("output"))?;
            for &y in t {
                r[0] = r[0].min(y);
                r[1] = r[1].max(y);
            }
        }
        self.images += x.size()[0] as usize;
        Ok(())
    }

    /// The calibration of what was observed (`checkpoint`: a label).
    pub fn finish(self, model: &Segmenter, checkpoint: &str) -> Result<Calibration> {
        if self.images == 0 {
            return Err(Error::invalid_input("calibration images", "calibration: no image was observed"));
        }
        Ok(Calibration {
            format: FORMAT.into(),
            version: 1,
            checkpoint: checkpoint.into(),
            images: self.images,
            network: network(model)?,
            ranges: ActivationRanges { ranges: self.ranges },
            source: PathBuf::new(),
        })
    }
}
