//! SGD with momentum and weight decay, as `torch.optim.SGD` (dampening 0, no
//! Nesterov), with its momentum buffers kept by parameter name so they can be saved
//! and restored for exact resume.

use std::collections::HashMap;

use crate::error::Result;
use tch::Tensor;

/// PyTorch's SGD with momentum and weight decay (dampening 0, no Nesterov).
pub struct Sgd {
    /// Momentum.
    pub momentum: f64,
    /// L2 weight decay added to the gradient.
    pub weight_decay: f64,
    /// Momentum buffers by parameter name.
    pub buffers: HashMap<String, Tensor>,
}

impl Sgd {
    /// An optimiser without momentum buffers yet.
    pub fn new(momentum: f64, weight_decay: f64) -> Self {
        Sgd { momentum, weight_decay, buffers: HashMap::new() }
    }

    /// One update of each group's parameters with that group's learning rate.
    /// Parameters without a gradient are skipped, as PyTorch does.
    pub fn step(&mut self, groups: &[(f64, &[(String, Tensor)])]) {
        tch::no_grad(|| {
            for (lr, params) in groups {
                for (name, p) in params.iter() {
                    let g = p.grad();
                    if !g.defined() {
                        continue;
                    }
                    let mut d = if self.weight_decay != 0.0 { g + p * self.weight_decay } else { g };
                    if self.momentum != 0.0 {
                        d = match self.buffers.get_mut(name) {
                            Some(buf) => {
                                let _ = buf.g_mul_scalar_(self.momentum);
                                let _ = buf.g_add_(&d);
                                buf.shallow_clone()
                            }
                            None => {
                                let buf = d.detach().copy();
                                self.buffers.insert(name.clone(), buf.shallow_clone());
                                buf
                            }
                        };
                    }
                    let mut p = p.shallow_clone();
                    let _ = p.g_sub_(&(d * *lr));
                }
            }
        })
    }

    /// Clears the parameters' gradients.
    pub fn zero_grad(params: &[(String, Tensor)]) {
        for (_, p) in params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.detach_();
                let _ = g.zero_();
            }
        }
    }

    /// The momentum buffers, sorted by name (for checkpoints).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self.buffers.iter().map(|(k, t)| (format!("momentum.{k}"), t.shallow_clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Restores momentum buffers saved by `state`, checking that each belongs to one
    /// of `params` (by name) and has its shape.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, params: &[(String, Tensor)], device: tch::Device) -> Result<()> {
        let shapes = super::shapes(params);
        let mut buffers = HashMap::new();
        for (k, t) in tensors {
            if !k.starts_with("momentum.") {
                continue;
            }
            let name = super::check_state_tensor(k, "momentum", t, &shapes)?;
            buffers.insert(name.to_string(), t.to_device(device));
        }
        self.buffers = buffers;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn momentum_state_must_match_the_parameters() {
        let params = vec![("w".to_string(), Tensor::zeros([2, 3], (tch::Kind::Float, tch::Device::Cpu)))];
        let mut sgd = Sgd::new(0.9, 0.0);
        let ok: HashMap<String, Tensor> = [("momentum.w".to_string(), Tensor::ones([2, 3], (tch::Kind::Float, tch::Device::Cpu)))].into();
        sgd.load_state(&ok, &params, tch::Device::Cpu).unwrap();
        let shape: HashMap<String, Tensor> =
            [("momentum.w".to_string(), Tensor::ones([3, 2], (tch::Kind::Float, tch::Device::Cpu)))].into();
        assert!(sgd.load_state(&shape, &params, tch::Device::Cpu).unwrap_err().to_string().contains("shape"));
        let other: HashMap<String, Tensor> =
            [("momentum.v".to_string(), Tensor::ones([2, 3], (tch::Kind::Float, tch::Device::Cpu)))].into();
        assert!(sgd.load_state(&other, &params, tch::Device::Cpu).unwrap_err().to_string().contains("no trainable parameter"));
        let nan: HashMap<String, Tensor> =
            [("momentum.w".to_string(), Tensor::full([2, 3], f64::NAN, (tch::Kind::Float, tch::Device::Cpu)))].into();
        assert!(sgd.load_state(&nan, &params, tch::Device::Cpu).unwrap_err().to_string().contains("non-finite"));
    }
}
