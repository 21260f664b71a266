//! AdamW, as `torch.optim.AdamW` (decoupled weight decay, bias-corrected moments,
//! no amsgrad), with its state kept by parameter name for checkpoints.
//!
//! Per parameter with gradient g at its step t (counted per parameter, as PyTorch
//! does): p ← p·(1 − lr·wd); m ← β₁m + (1 − β₁)g; v ← β₂v + (1 − β₂)g²;
//! p ← p − (lr / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε). The operations are
//! PyTorch's single-tensor path in the same order, so results agree to rounding.

use std::collections::HashMap;

use crate::error::Result;
use tch::{Kind, Tensor};

/// A parameter group: learning rate, weight decay, parameters.
pub type Group<'a> = (f64, f64, &'a [(String, Tensor)]);

/// One parameter's moments and step count.
struct Moments {
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: u64,
}

/// AdamW with per-group learning rates and weight decays.
pub struct AdamW {
    /// β₁, β₂.
    pub betas: (f64, f64),
    /// ε.
    pub eps: f64,
    state: HashMap<String, Moments>,
}

impl AdamW {
    /// An optimiser without state yet.
    pub fn new(betas: (f64, f64), eps: f64) -> Self {
        AdamW { betas, eps, state: HashMap::new() }
    }

    /// One update of each group's parameters: (learning rate, weight decay, params).
    /// Parameters without a gradient are skipped, as PyTorch does.
    pub fn step(&mut self, groups: &[Group]) {
        tch::no_grad(|| {
            for (lr, wd, params) in groups {
                for (name, p) in params.iter() {
                    let g = p.grad();
                    if g.defined() {
                        self.update(name, p, &g, *lr, *wd);
                    }
                }
            }
        })
    }

    fn update(&mut self, name: &str, p: &Tensor, g: &Tensor, lr: f64, wd: f64) {
        let (b1, b2) = self.betas;
        let m = self.state.entry(name.to_string()).or_insert_with(|| Moments {
            exp_avg: p.zeros_like().to_kind(Kind::Float),
            exp_avg_sq: p.zeros_like().to_kind(Kind::Float),
            step: 0,
        });
        m.step += 1;
        let mut p = p.shallow_clone();
        let _ = p.g_mul_scalar_(1.0 - lr * wd);
        let _ = m.exp_avg.lerp_(g, 1.0 - b1);
        let _ = m.exp_avg_sq.g_mul_scalar_(b2);
        let _ = m.exp_avg_sq.g_add_(&((g * (1.0 - b2)) * g));
        let bias1 = 1.0 - b1.powi(m.step.min(i32::MAX as u64) as i32);
        let bias2 = 1.0 - b2.powi(m.step.min(i32::MAX as u64) as i32);
        let denom = m.exp_avg_sq.sqrt() / bias2.sqrt() + self.eps;
        let _ = p.g_sub_(&(&m.exp_avg * (lr / bias1) / denom));
    }

    /// The moments (`exp_avg.<name>`, `exp_avg_sq.<name>`) and step counts
    /// (`step.<name>`, int64), sorted by name (for checkpoints).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut v = Vec::new();
        for (k, m) in &self.state {
            v.push((format!("exp_avg.{k}"), m.exp_avg.shallow_clone()));
            v.push((format!("exp_avg_sq.{k}"), m.exp_avg_sq.shallow_clone()));
            v.push((format!("step.{k}"), Tensor::from_slice(&[m.step as i64])));
        }
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Restores what `state` saved: every parameter's two moments and step, each
    /// checked against `params` (name, shape, finite values).
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, params: &[(String, Tensor)], device: tch::Device) -> Result<()> {
        let shapes = super::shapes(params);
        let mut state = HashMap::new();
        for (k, t) in tensors {
            let Some(name) = k.strip_prefix("exp_avg.") else { continue };
            super::check_state_tensor(k, "exp_avg", t, &shapes)?;
            let sq_key = format!("exp_avg_sq.{name}");
            let sq = tensors.get(&sq_key).ok_or_else(|| super::bad_state(format!("optimiser state {sq_key} is missing")))?;
            super::check_state_tensor(&sq_key, "exp_avg_sq", sq, &shapes)?;
            let step = tensors.get(&format!("step.{name}")).and_then(|s| s.f_int64_value(&[0]).ok()).unwrap_or(-1);
            if step < 1 {
                return Err(super::bad_state(format!("optimiser state step.{name} is missing, not one number or not positive")));
            }
            let m = Moments { exp_avg: t.to_device(device), exp_avg_sq: sq.to_device(device), step: step as u64 };
            state.insert(name.to_string(), m);
        }
        if let Some(k) = tensors.keys().find(|k| k.starts_with("exp_avg_sq.") && !state.contains_key(&k["exp_avg_sq.".len()..])) {
            return Err(super::bad_state(format!("optimiser state {k} has no exp_avg partner")));
        }
        self.state = state;
        Ok(())
    }

    /// Parameters that have optimiser state.
    pub fn len(&self) -> usize {
        self.state.len()
    }

    /// Whether no parameter has state yet.
    pub fn is_empty(&self) -> bool {
        self.state.is_empty()
    }
}
