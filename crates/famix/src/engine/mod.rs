//! Inference engines. famix runs its networks on libtorch; for inference it can also
//! hand the eval-mode network to ONNX Runtime ([`onnxruntime`]), which on CPUs runs
//! famix's own ONNX graph (every batch norm folded, built in memory by
//! [`crate::export::to_onnx`]) faster than libtorch's eager kernels. The choice is a
//! [`Segmenter::set_engine`] away; everything that segments (`predict`, `eval`,
//! `serve`) goes through it.
//!
//! `Engine::Auto` picks ONNX Runtime for fp32 on the CPU when its library is
//! installed, and libtorch otherwise (CUDA, bf16 — ONNX Runtime's CPU kernels have no
//! bf16 convolution —, or no ONNX Runtime).
//!
//! int8 ([`attach_int8`]) runs on ONNX Runtime only: its CPU provider has integer
//! convolutions (u8 × s8, VNNI), libtorch's eager CPU path has none; the activation
//! ranges come from a calibration ([`calibration`]).

pub mod calibration;
pub mod onnxruntime;

use tch::Device;

use crate::error::{Error, Result};
use crate::model::{Precision, Segmenter};

/// Which engine runs inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// ONNX Runtime for fp32 on the CPU when installed, else libtorch.
    #[default]
    Auto,
    /// libtorch (every device and precision).
    Torch,
    /// ONNX Runtime (CPU, fp32).
    OnnxRuntime,
}

impl Engine {
    /// "auto", "torch" or "onnxruntime".
    pub fn name(self) -> &'static str {
        match self {
            Engine::Auto => "auto",
            Engine::Torch => "torch",
            Engine::OnnxRuntime => "onnxruntime",
        }
    }
}
crate::names::named!(Engine, [Engine::Auto, Engine::Torch, Engine::OnnxRuntime]);

/// Puts `model`'s inference on `engine` for `precision` and returns the engine it runs
/// on (`Auto` resolved) and, when `Auto` could not use ONNX Runtime, why. Call after
/// the weights and output stride are final (the engine keeps its own copy).
pub fn attach(model: &mut Segmenter, engine: Engine, precision: Precision) -> Result<(Engine, Option<String>)> {
    let fits = model.device() == Device::Cpu && precision == Precision::Fp32;
    match engine {
        Engine::Torch => {
            model.set_engine(None);
            Ok((Engine::Torch, None))
        }
        Engine::OnnxRuntime if !fits => {
            Err(Error::invalid_setting("engine", "onnxruntime runs fp32 on the CPU; use `engine` torch (or auto) for CUDA or `amp` bf16"))
        }
        Engine::OnnxRuntime => {
            model.set_engine(Some(Box::new(onnxruntime::OrtNet::new()?)));
            Ok((Engine::OnnxRuntime, None))
        }
        Engine::Auto if !fits => {
            model.set_engine(None);
            Ok((Engine::Torch, None))
        }
        Engine::Auto => match onnxruntime::OrtNet::new() {
            Ok(net) => {
                model.set_engine(Some(Box::new(net)));
                Ok((Engine::OnnxRuntime, None))
            }
            Err(e) => {
                model.set_engine(None);
                Ok((Engine::Torch, Some(format!("running on libtorch: {e}"))))
            }
        },
    }
}

/// Puts `model`'s inference on ONNX Runtime with int8 convolutions quantised with the
/// calibration's ranges (CPU only). Call after the weights and output stride are final.
pub fn attach_int8(model: &mut Segmenter, calibration: &calibration::Calibration) -> Result<()> {
    if model.device() != Device::Cpu {
        return Err(Error::invalid_setting("int8", "int8 inference runs on the CPU (ONNX Runtime)"));
    }
    calibration.check_fits(model)?;
    model.set_engine(Some(Box::new(onnxruntime::OrtNet::int8(calibration.ranges.clone())?)));
    Ok(())
}
