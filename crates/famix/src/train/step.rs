//! One training iteration (shared by `train` and `famix bench`): normalise on the
//! device, draw the iteration's styles, forward with local style mixing on layer1,
//! label-smoothed cross-entropy, backward, SGD with the poly schedule.
//!
//! Every random choice of iteration `t` (style picks, Beta weights, dropout) is
//! derived from (seed, t), so the step is a function of the weights, the batch and `t`.

use crate::error::{bail, fail, Context, Result};

use tch::{Kind, Tensor};

use crate::data::loader::Batch;
use crate::model::inference::normalize_u8;
use crate::model::Segmenter;
use crate::optim::{poly_lr, Sgd};
use crate::rng::{stream, Rng};
use crate::style::bank::{BankTables, StyleBank};
use crate::style::mixing::{self, StyleMode};

use super::config::TrainConfig;

/// One training iteration's computation (shared by `train` and `famix bench`):
/// normalise on the device, draw styles, forward with mixing, loss, backward, SGD.
pub struct Stepper<'a> {
    /// The model being trained.
    pub model: &'a Segmenter,
    /// The optimiser.
    pub sgd: Sgd,
    bb: Vec<(String, Tensor)>,
    head: Vec<(String, Tensor)>,
    all: Vec<(String, Tensor)>,
    /// Style tables (None without styles).
    pub tables: Option<BankTables>,
    cfg: &'a TrainConfig,
}

impl<'a> Stepper<'a> {
    /// A stepper over the model's trainable parameters.
    pub fn new(model: &'a Segmenter, cfg: &'a TrainConfig, tables: Option<BankTables>, sgd: Sgd) -> Self {
        let (bb, head) = model.param_groups();
        let all = bb.iter().chain(&head).map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
        Stepper { model, sgd, bb, head, all, tables, cfg }
    }

    /// (head, backbone) learning rates of iteration `step`.
    pub fn learning_rates(&self, step: u64) -> (f64, f64) {
        let c = self.cfg;
        (poly_lr(c.lr, step, c.iters, c.poly_power, c.min_lr), poly_lr(c.lr * c.backbone_lr_mult, step, c.iters, c.poly_power, c.min_lr))
    }

    /// Runs iteration `step` (0-based) on a batch; returns the loss (on the device).
    pub fn step(&mut self, batch: &Batch, step: u64) -> Result<Tensor> {
        let cfg = self.cfg;
        let device = self.model.device();
        tch::manual_seed((Rng::derive(cfg.seed, &[stream::TORCH_SEED, step]).next_u64() >> 1) as i64);
        let (lr_head, lr_bb) = self.learning_rates(step);
        let x = normalize_u8(&batch.images, device);
        let y = crate::device::upload(&batch.labels, device).to_kind(Kind::Int64);
        let draw = match &self.tables {
            Some(t) => Some(mixing::draw(t, &batch.dominant, cfg.style_mode, cfg.beta, cfg.seed, step)?),
            None => None,
        };
        let tables = self.tables.as_ref();
        let restyle = |f1: &Tensor| mixing::restyle_with(f1, tables.unwrap(), draw.as_ref().unwrap(), cfg.grid);
        let restyle_ref: Option<&dyn Fn(&Tensor) -> Tensor> = if draw.is_some() { Some(&restyle) } else { None };
        Sgd::zero_grad(&self.all);
        let loss = {
            let _amp = crate::device::Autocast::new(device, cfg.amp_bf16);
            let logits = self.model.forward(&x, true, restyle_ref);
            logits.to_kind(Kind::Float).cross_entropy_loss::<Tensor>(&y, None, tch::Reduction::Mean, 255, cfg.label_smoothing)
        };
        loss.backward();
        self.sgd.step(&[(lr_bb, &self.bb), (lr_head, &self.head)]);
        Ok(loss.detach())
    }
}

/// Style tables for a run, checked against the backbone.
pub fn bank_tables(cfg: &TrainConfig, model: &Segmenter) -> Result<Option<BankTables>> {
    if cfg.style_mode == StyleMode::NoStyles {
        return Ok(None);
    }
    let p = cfg.styles.as_ref().context("--styles BANK is needed (or --no-styles)")?;
    let bank = StyleBank::load(p)?;
    let want = model.config().backbone.low_level_channels() as usize;
    if bank.channels != want {
        fail!(Incompatible, p, "{}: styles have {} channels, the backbone's layer1 has {want}", p.display(), bank.channels);
    }
    let t = bank.device_tables(cfg.head.num_classes as usize, model.device()).with_context(|| format!("{}", p.display()))?;
    Ok(Some(t))
}

/// Labels must be train ids below the class count or the ignore label: the loss
/// would otherwise index past the logits (a crash in libtorch).
pub(super) fn check_labels(batch: &Batch, num_classes: i64, iteration: u64) -> Result<()> {
    let valid = batch.labels.lt(num_classes).logical_or(&batch.labels.eq(255));
    if valid.all().int64_value(&[]) == 0 {
        let bad = batch.labels.masked_select(&valid.logical_not()).max().int64_value(&[]);
        bail!(
            "label id {bad} in the batch of iteration {iteration} is not below --num-classes {num_classes} (labels must be train ids < {num_classes} or 255)"
        );
    }
    Ok(())
}
