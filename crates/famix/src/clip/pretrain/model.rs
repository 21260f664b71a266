//! The CLIP being pretrained: both towers and the learnable temperature in one
//! variable store, CLIP's initialisation, and the contrastive loss.
//!
//! Loss (CLIP, as open_clip's `ClipLoss`): with L2-normalised image and text
//! embeddings I, T of a batch of N pairs and s = exp(logit_scale), the logits are
//! s·I·Tᵀ and the loss is the mean of the cross-entropies of each image against all
//! texts and of each text against all images, the true pair being the target. The
//! temperature is learnt as log s, initialised to log(1/0.07) and clamped to
//! [0, log 100] after every step.

use std::path::Path;

use tch::{nn, Device, Kind, Tensor};

use crate::clip::{l2_normalize, ModifiedResNet, OutputStride, ResNetConfig, TextConfig, TextTransformer};
use crate::error::Result;
use crate::nn::NamedTensors;

/// log(1/0.07): CLIP's initial logit scale.
pub(crate) fn initial_logit_scale() -> f64 {
    (1.0f64 / 0.07).ln()
}

/// The upper clamp of the logit scale: log 100.
pub(crate) fn max_logit_scale() -> f64 {
    100f64.ln()
}

/// A trainable CLIP with CLIP's state-dict names (`visual.*`, `transformer.*`,
/// `token_embedding.weight`, ..., `logit_scale`).
pub struct TrainableClip {
    /// Every parameter and batch-norm buffer.
    pub vs: nn::VarStore,
    /// The image tower (with its attention pool).
    pub visual: ModifiedResNet,
    /// The text tower.
    pub text: TextTransformer,
    /// log(1/temperature).
    pub logit_scale: Tensor,
}

impl TrainableClip {
    /// A freshly initialised CLIP (CLIP's `initialize_parameters`) on `device`; the
    /// caller seeds libtorch's generator first.
    pub fn new(visual: &ResNetConfig, text: &TextConfig, device: Device) -> Self {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let v = ModifiedResNet::new(&(&root / "visual"), visual, true, OutputStride::Os32);
        let t = TextTransformer::new(&root, text);
        let logit_scale = root.var("logit_scale", &[], nn::Init::Const(initial_logit_scale()));
        let m = TrainableClip { vs, visual: v, text: t, logit_scale };
        m.clip_init();
        m
    }

    /// A CLIP initialised from a checkpoint (fine-tuning): the architecture and the
    /// weights are the file's; a file without a logit scale starts from CLIP's.
    pub fn load(path: &Path, device: Device) -> Result<Self> {
        Self::from_state_dict(&crate::io::StateDict::load(path)?, device)
    }

    /// [`TrainableClip::load`] from already-read tensors.
    pub(crate) fn from_state_dict(sd: &crate::io::StateDict, device: Device) -> Result<Self> {
        let path = &sd.path;
        let frozen = crate::clip::Clip::from_state_dict(sd, Device::Cpu, OutputStride::Os32)?;
        let text = frozen.text()?.config.clone();
        let m = TrainableClip::new(&frozen.visual.config, &text, Device::Cpu);
        let ignore = |k: &str| k.starts_with(crate::io::run_folder::EXTRA_PREFIX) || k == "logit_scale";
        crate::io::load_vars(&m.vs, "", &sd.tensors, "", &ignore, path, "CLIP model")?;
        if let Some(ls) = sd.tensors.get("logit_scale") {
            tch::no_grad(|| m.logit_scale.shallow_clone().copy_(&ls.to_kind(Kind::Float).reshape([])));
        }
        let mut m = m;
        m.vs.set_device(device);
        Ok(m)
    }

    /// CLIP's `initialize_parameters`: token and positional embeddings N(0, 0.02)
    /// and N(0, 0.01); attention-pool projections N(0, 1/√in); each bottleneck's last
    /// batch norm starts at zero (the block starts as its shortcut); the text blocks'
    /// attention N(0, 1/√w), output projections N(0, 1/√w · 1/√(2L)), MLP input
    /// N(0, 1/√(2w)); text projection N(0, 1/√w).
    fn clip_init(&self) {
        let (w, layers) = (self.text.config.width as f64, self.text.config.layers as f64);
        let proj_std = w.powf(-0.5) * (2.0 * layers).powf(-0.5);
        let attn_std = w.powf(-0.5);
        let fc_std = (2.0 * w).powf(-0.5);
        let pool_in = (self.visual.config.width * 32) as f64;
        // Draws in name order: the variable store is a hash map, and the generator's
        // draws must land on the same tensors in every process.
        let mut vars: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        tch::no_grad(|| {
            for (name, mut t) in vars {
                let std = match name.as_str() {
                    "token_embedding.weight" => Some(0.02),
                    "positional_embedding" => Some(0.01),
                    "text_projection" => Some(attn_std),
                    n if n.starts_with("visual.attnpool.") && n.ends_with("_proj.weight") => Some(pool_in.powf(-0.5)),
                    n if n.ends_with("attn.in_proj_weight") => Some(attn_std),
                    n if n.ends_with("attn.out_proj.weight") || n.ends_with("mlp.c_proj.weight") => Some(proj_std),
                    n if n.ends_with("mlp.c_fc.weight") => Some(fc_std),
                    _ => None,
                };
                if let Some(std) = std {
                    let _ = t.normal_(0.0, std);
                } else if (name.starts_with("visual.layer") && name.ends_with("bn3.weight")) || name.ends_with("attn.out_proj.bias") {
                    let _ = t.zero_();
                }
            }
        });
    }

    /// The CLIP loss of a batch: images (N, 3, R, R) normalised with CLIP's
    /// statistics, token rows (N, context). Batch norms run in train mode.
    pub fn loss(&self, images: &Tensor, tokens: &Tensor) -> Result<Tensor> {
        let img = l2_normalize(&self.visual.embed_layer4(&self.visual.forward_all(images, true))?);
        let txt = l2_normalize(&self.text.encode(tokens)?);
        let logits = img.matmul(&txt.tr()) * self.logit_scale.exp();
        let n = logits.size()[0];
        let target = Tensor::arange(n, (Kind::Int64, logits.device()));
        let ce = |l: &Tensor| l.cross_entropy_loss::<Tensor>(&target, None, tch::Reduction::Mean, -100, 0.0);
        Ok((ce(&logits) + ce(&logits.tr())) / 2.0)
    }

    /// Clamps the logit scale to [0, log 100] (after each optimiser step).
    pub(crate) fn clamp_logit_scale(&self) {
        tch::no_grad(|| {
            let _ = self.logit_scale.shallow_clone().clamp_(0.0, max_logit_scale());
        });
    }

    /// Trainable parameters, sorted by name, split as open_clip does into those with
    /// weight decay (matrices and convolutions) and those without (gains, biases,
    /// batch/layer-norm parameters, the logit scale).
    pub fn param_groups(&self) -> (NamedTensors, NamedTensors) {
        let mut vars: Vec<(String, Tensor)> = self.vs.trainable_variables_named();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars.into_iter().partition(|(n, t)| {
            let exempt = t.dim() < 2 || n.contains("bn") || n.contains("ln_") || n.contains("bias") || n == "logit_scale";
            !exempt
        })
    }

    /// Every variable (parameters and buffers), sorted by name: the CLIP state dict.
    pub fn state_dict(&self) -> Vec<(String, Tensor)> {
        let mut vars: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    }
}

/// `trainable_variables` with names (tch gives names only for all variables).
trait NamedTrainable {
    fn trainable_variables_named(&self) -> Vec<(String, Tensor)>;
}

impl NamedTrainable for nn::VarStore {
    fn trainable_variables_named(&self) -> Vec<(String, Tensor)> {
        self.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect()
    }
}
