//! CLIP: the ResNet image tower, the text tower, the BPE tokenizer, image
//! preprocessing, weight import and the checkpoint downloader.

pub mod download;
pub mod preprocess;
pub mod pretrain;
pub(crate) mod resnet;
pub(crate) mod text;
pub mod tokenizer;

use std::path::Path;

use crate::error::{Error, Result};
use tch::{nn, Device, Tensor};

pub use crate::io::StateDict;
pub use resnet::{ModifiedResNet, OutputStride, ResNetConfig};
pub use text::{TextConfig, TextTransformer};

/// A frozen CLIP model (famix never trains CLIP's own weights).
pub struct Clip {
    /// All weights (frozen).
    pub vs: nn::VarStore,
    /// The image tower.
    pub visual: ModifiedResNet,
    /// The text tower, when the checkpoint has one.
    pub text: Option<TextTransformer>,
    /// log of CLIP's logit scale (1/temperature), when the checkpoint has it.
    pub logit_scale: Option<f64>,
}

impl std::fmt::Debug for Clip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clip")
            .field("visual", &self.visual.config)
            .field("text", &self.text.as_ref().map(|t| &t.config))
            .field("device", &self.device())
            .finish_non_exhaustive()
    }
}

impl Clip {
    /// A randomly initialised CLIP of the given shape (benchmarks, the demo, tests).
    pub fn random(visual: &ResNetConfig, text: Option<&TextConfig>, device: Device, os: OutputStride) -> Self {
        let mut vs = nn::VarStore::new(device);
        let root = vs.root();
        let v = ModifiedResNet::new(&(&root / "visual"), visual, true, os);
        let t = text.map(|c| TextTransformer::new(&root, c));
        vs.freeze();
        Clip { vs, visual: v, text: t, logit_scale: Some((1.0f64 / 0.07).ln()) }
    }

    /// Loads a CLIP checkpoint (OpenAI TorchScript, open_clip state dict, safetensors;
    /// gzip-compressed too), inferring the architecture from its shapes.
    pub fn load(path: &Path, device: Device, os: OutputStride) -> Result<Self> {
        let sd = StateDict::load(path)?;
        Self::from_state_dict(&sd, device, os)
    }

    /// Builds a CLIP from already-loaded tensors (architecture inferred from shapes).
    pub(crate) fn from_state_dict(sd: &StateDict, device: Device, os: OutputStride) -> Result<Self> {
        let path = &sd.path;
        if !sd.has_prefix("visual.") {
            let hint = if sd.has_prefix("backbone.") || sd.has_prefix("classifier.") {
                " (this looks like a segmenter checkpoint: load it as a segmenter)"
            } else {
                ""
            };
            return Err(Error::invalid_input(
                path,
                format!("{}: no CLIP image tower ('visual.*' keys) in this file{hint}", path.display()),
            ));
        }
        let not_clip = "not the weights of a CLIP ResNet";
        let vcfg = ResNetConfig::infer(&sd.tensors, "visual.").map_err(|e| e.unreadable(path, not_clip))?;
        let tcfg = TextConfig::infer(&sd.tensors).map_err(|e| e.unreadable(path, not_clip))?;
        let mut clip = Self::random(&vcfg, tcfg.as_ref(), Device::Cpu, os);
        let has_text = tcfg.is_some();
        // A pretraining checkpoint's optimiser state (optim.*) is not part of the model.
        let ignore = |k: &str| (!has_text && k == "text_projection") || k.starts_with(crate::io::run_folder::EXTRA_PREFIX);
        crate::io::load_vars(&clip.vs, "", &sd.tensors, "", &ignore, path, "CLIP model")?;
        clip.logit_scale = match sd.tensors.get("logit_scale") {
            Some(t) if t.numel() == 1 => Some(t.f_double_value(&[])?),
            Some(t) => {
                return Err(Error::invalid_input(path, format!("{}: logit_scale has shape {:?}, not one number", path.display(), t.size())))
            }
            None => None,
        };
        clip.vs.set_device(device);
        Ok(clip)
    }

    /// Where the weights live.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Image embeddings (N, embed) of preprocessed images (N, 3, R, R), R = input resolution.
    pub fn encode_image(&self, images: &Tensor) -> Result<Tensor> {
        tch::no_grad(|| self.visual.encode(&crate::device::upload(images, self.device())))
    }

    /// The text tower, or an error naming the missing tower.
    pub fn text(&self) -> Result<&TextTransformer> {
        self.text.as_ref().ok_or_else(|| Error::incompatible("clip", "this CLIP checkpoint has no text tower (image-only weights)"))
    }

    /// Text embeddings (N, embed) of token rows (N, context).
    pub fn encode_text(&self, tokens: &Tensor) -> Result<Tensor> {
        let t = self.text()?;
        tch::no_grad(|| t.encode(&crate::device::upload(tokens, self.device())))
    }
}

/// L2-normalises rows.
pub fn l2_normalize(x: &Tensor) -> Tensor {
    x / x.norm_scalaropt_dim(2.0, [-1], true)
}
