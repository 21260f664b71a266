//! One training iteration (shared by `train` and `famix bench`): normalise on the
//! device, draw the iteration's styles, forward with local style mixing on layer1,
//! label-smoothed cross-entropy, backward, SGD with the poly schedule.
//!
//! Every random choice of iteration `t` (style picks, Beta weights, dropout) is
//! derived from (seed, t), so the step is a function of the weights, the batch and `t`.

use crate::error::{fail, Context, Error, Result};

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

/// The head's and the backbone's learning rates at one iteration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LearningRates {
    /// The head's.
    pub head: f64,
    /// The trainable backbone's (`lr · backbone_lr_mult`).
    pub backbone: f64,
}

impl<'a> Stepper<'a> {
    /// A stepper over the model's trainable parameters.
    pub fn new(model: &'a Segmenter, cfg: &'a TrainConfig, tables: Option<BankTables>, sgd: Sgd) -> Self {
        let crate::model::ParamGroups { backbone: bb, head } = model.param_groups();
        let all = bb.iter().chain(&head).map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
        Stepper { model, sgd, bb, head, all, tables, cfg }
    }

    /// The learning rates of iteration `step`.
    pub(crate) fn learning_rates(&self, step: u64) -> LearningRates {
        let c = self.cfg;
        LearningRates {
            head: poly_lr(c.lr, step, c.iters, c.poly_power, c.min_lr),
            backbone: poly_lr(c.lr * c.backbone_lr_mult, step, c.iters, c.poly_power, c.min_lr),
        }
    }

    /// Runs iteration `step` (0-based) on a batch; returns the loss (on the device).
    pub fn step(&mut self, batch: &Batch, step: u64) -> Result<Tensor> {
        let cfg = self.cfg;
        let device = self.model.device();
        tch::manual_seed((Rng::derive(cfg.seed, &[stream::TORCH_SEED, step]).next_u64() >> 1) as i64);
        let LearningRates { head: lr_head, backbone: lr_bb } = self.learning_rates(step);
        let x = normalize_u8(&batch.images, device);
        let y = crate::device::upload(&batch.labels, device).to_kind(Kind::Int64);
        let restyler = self.restyler(batch, step)?;
        let restyle = restyler.as_ref().map(|r| move |f1: &Tensor| r.apply(f1, cfg, step));
        let restyle_ref = restyle.as_ref().map(|f| f as &dyn Fn(&Tensor) -> Tensor);
        Sgd::zero_grad(&self.all);
        let loss = {
            let _amp = crate::device::Autocast::new(device, cfg.precision == crate::model::Precision::Bf16);
            let logits = self.model.forward(&x, true, restyle_ref);
            logits.to_kind(Kind::Float).cross_entropy_loss::<Tensor>(&y, None, tch::Reduction::Mean, 255, cfg.label_smoothing)
        };
        loss.backward();
        self.sgd.step(&[(lr_bb, &self.bb), (lr_head, &self.head)]);
        Ok(loss.detach())
    }
}

/// What restyles layer1 in one iteration (none without style transfer).
enum Restyler<'t> {
    /// Bank rows drawn for each (image, cell) and the Beta weights (FAMix, no-mix).
    Bank(&'t BankTables, mixing::StyleDraw),
    /// The random-style control's Beta weights.
    Random(Tensor),
}

impl Restyler<'_> {
    /// Restyles layer1 features `f1` for iteration `step`.
    fn apply(&self, f1: &Tensor, cfg: &TrainConfig, step: u64) -> Tensor {
        match self {
            Restyler::Bank(tables, draw) => mixing::restyle_with(f1, tables, draw, cfg.grid),
            Restyler::Random(s) => mixing::restyle_random(f1, s, cfg.grid, cfg.seed, step),
        }
    }
}

impl Stepper<'_> {
    fn restyler(&self, batch: &Batch, step: u64) -> Result<Option<Restyler<'_>>> {
        let cfg = self.cfg;
        Ok(match (&self.tables, cfg.style_mode) {
            (_, StyleMode::NoStyles) => None,
            (_, StyleMode::RandomMix) => {
                let channels = self.model.config().backbone.low_level_channels() as usize;
                let images = batch.images.size()[0] as usize;
                Some(Restyler::Random(mixing::beta_weights(images, channels, cfg.beta, cfg.seed, step, self.model.device())?))
            }
            (Some(t), mode) => Some(Restyler::Bank(t, mixing::draw(t, &batch.dominant, mode, cfg.beta, cfg.seed, step)?)),
            (None, _) => None,
        })
    }
}

/// Style tables for a run, checked against the backbone.
pub fn bank_tables(cfg: &TrainConfig, model: &Segmenter) -> Result<Option<BankTables>> {
    if !cfg.style_mode.needs_bank() {
        return Ok(None);
    }
    let p = cfg.styles.as_ref().ok_or_else(|| Error::invalid_setting("styles", "a style bank is needed (or `no_styles`)"))?;
    let bank = StyleBank::load(p)?;
    if bank.total() == 0 {
        fail!(InvalidInput, p, "{}: the bank holds no styles (it was mined from no batch)", p.display());
    }
    let want = model.config().backbone.low_level_channels() as usize;
    if bank.channels != want {
        fail!(Incompatible, p, "{}: styles have {} channels, the backbone's layer1 has {want}", p.display(), bank.channels);
    }
    if let Err(d) = bank.classes.same_classes(&model.config().classes) {
        fail!(Incompatible, p, "{}: the styles were mined for other classes than the model's: {d} (bank vs model)", p.display());
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
        let problem = format!(
            "label id {bad} in the batch of iteration {iteration} is not below `num_classes` {num_classes} (labels must be train ids < {num_classes} or 255)"
        );
        return Err(crate::Error::invalid_input("labels", problem));
    }
    Ok(())
}
