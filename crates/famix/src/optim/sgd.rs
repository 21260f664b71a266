//! SGD with momentum and weight decay, as `torch.optim.SGD` (dampening 0, no
//! Nesterov), with its momentum buffers kept by parameter name so they can be saved
//! and restored for exact resume.

use std::collections::HashMap;

use crate::error::Result;
use tch::Tensor;

extern "C" {
    fn famix_sgd_foreach(
        params: *mut *mut std::ffi::c_void,
        grads: *mut *mut std::ffi::c_void,
        bufs: *mut *mut std::ffi::c_void,
        n: i32,
        lr: f64,
        wd: f64,
        momentum: f64,
    ) -> bool;
}

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
    ///
    /// Once every parameter of a group has its momentum buffer, the group is updated
    /// with PyTorch's multi-tensor (foreach) kernels — a few launches for the whole
    /// group instead of about five per parameter, which matters on CUDA — doing the
    /// same operations in the same order as the per-tensor loop (identical results on
    /// the CPU, tested); the first step (which creates the buffers) runs the loop.
    pub fn step(&mut self, groups: &[(f64, &[(String, Tensor)])]) {
        tch::no_grad(|| {
            for (lr, params) in groups {
                if !self.step_foreach(*lr, params) {
                    self.step_loop(*lr, params);
                }
            }
        })
    }

    /// The multi-tensor update of one group; false (nothing changed) when a buffer is
    /// missing or libtorch refuses.
    fn step_foreach(&mut self, lr: f64, params: &[(String, Tensor)]) -> bool {
        let with_grad: Vec<(&String, &Tensor, Tensor)> =
            params.iter().map(|(n, p)| (n, p, p.grad())).filter(|(_, _, g)| g.defined()).collect();
        if with_grad.is_empty() {
            return true;
        }
        let bufs: Option<Vec<&Tensor>> =
            if self.momentum != 0.0 { with_grad.iter().map(|(n, _, _)| self.buffers.get(*n)).collect() } else { Some(vec![]) };
        let Some(bufs) = bufs else { return false };
        let ptr = |t: &Tensor| t.as_ptr() as *mut std::ffi::c_void;
        let mut p: Vec<_> = with_grad.iter().map(|(_, p, _)| ptr(p)).collect();
        let mut g: Vec<_> = with_grad.iter().map(|(_, _, g)| ptr(g)).collect();
        let mut b: Vec<_> = bufs.into_iter().map(ptr).collect();
        let b_ptr = if self.momentum != 0.0 { b.as_mut_ptr() } else { std::ptr::null_mut() };
        // SAFETY: the pointers are live tch tensors (at::Tensor*) for the duration of
        // the call, n matches every array, and the shim catches C++ exceptions.
        unsafe { famix_sgd_foreach(p.as_mut_ptr(), g.as_mut_ptr(), b_ptr, p.len() as i32, lr, self.weight_decay, self.momentum) }
    }

    /// The per-tensor update of one group (also creates missing momentum buffers).
    fn step_loop(&mut self, lr: f64, params: &[(String, Tensor)]) {
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
            let _ = p.g_sub_(&(d * lr));
        }
    }

    /// Clears the parameters' gradients.
    pub(crate) fn zero_grad(params: &[(String, Tensor)]) {
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

    /// The multi-tensor path gives the per-tensor loop's parameters and buffers to the
    /// bit (tolerance 0) over several steps, with weight decay and momentum.
    #[test]
    fn foreach_step_equals_the_loop() {
        tch::manual_seed(3);
        let make = || -> Vec<(String, Tensor)> {
            tch::manual_seed(3);
            (0..4)
                .map(|i| (format!("p{i}"), Tensor::randn([3 + i, 5], (tch::Kind::Float, tch::Device::Cpu)).set_requires_grad(true)))
                .collect()
        };
        // b is a copy of a (not a second draw: other tests draw from libtorch's global
        // generator in parallel, between a seed and its draws).
        let a = make();
        let b: Vec<(String, Tensor)> = a.iter().map(|(n, t)| (n.clone(), t.detach().copy().set_requires_grad(true))).collect();
        let (mut sa, mut sb) = (Sgd::new(0.9, 1e-4), Sgd::new(0.9, 1e-4));
        for step in 0..4 {
            for params in [&a, &b] {
                Sgd::zero_grad(params);
                let loss = params
                    .iter()
                    .map(|(_, p)| (p * p * (step as f64 + 1.0)).sin().sum(tch::Kind::Float))
                    .fold(Tensor::zeros([], (tch::Kind::Float, tch::Device::Cpu)), |x, y| x + y);
                loss.backward();
            }
            tch::no_grad(|| {
                sa.step_loop(0.1, &a);
                if !sb.step_foreach(0.1, &b) {
                    sb.step_loop(0.1, &b);
                }
            });
            assert_eq!(sb.buffers.len(), 4, "the first step creates every buffer");
        }
        for ((n, x), (_, y)) in a.iter().zip(&b) {
            assert_eq!(Vec::<f32>::try_from(x.flatten(0, -1)).unwrap(), Vec::<f32>::try_from(y.flatten(0, -1)).unwrap(), "{n}");
            let (bx, by) = (&sa.buffers[n], &sb.buffers[n]);
            assert_eq!(Vec::<f32>::try_from(bx.flatten(0, -1)).unwrap(), Vec::<f32>::try_from(by.flatten(0, -1)).unwrap(), "buffer {n}");
        }
        // After the first step the foreach path ran (it reports success).
        tch::no_grad(|| assert!(sb.step_foreach(0.1, &b)));
    }

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
