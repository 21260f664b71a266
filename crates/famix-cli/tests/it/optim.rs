//! famix's AdamW against PyTorch's `torch.optim.AdamW` (the real client, run from the
//! tools venv): the same parameters and gradients for five steps give the same
//! parameters and moments (tolerance 1e-6 relative to 1 + |value|), and a resumed
//! optimiser (state saved and restored) continues exactly (tolerance 0).
use crate::common;

use std::collections::HashMap;

use common::*;
use famix::optim::AdamW;
use tch::{Device, Kind, Tensor};

const STEPS: usize = 5;
const LR: f64 = 0.01;
const WD: f64 = 0.2;
const B1: f64 = 0.9;
const B2: f64 = 0.98;
const EPS: f64 = 1e-6;

fn setup() -> (Vec<(String, Tensor)>, Vec<Vec<Tensor>>) {
    tch::manual_seed(11);
    let params = vec![
        ("a".to_string(), Tensor::randn([4, 3], (Kind::Float, Device::Cpu))),
        ("b".to_string(), Tensor::randn([5], (Kind::Float, Device::Cpu))),
    ];
    let grads = (0..STEPS).map(|_| params.iter().map(|(_, p)| p.randn_like() * 0.3).collect()).collect();
    (params, grads)
}

fn run_famix(params: &[(String, Tensor)], grads: &[Vec<Tensor>], from: usize, opt: &mut AdamW) -> Vec<(String, Tensor)> {
    let live: Vec<(String, Tensor)> = params.iter().map(|(n, p)| (n.clone(), p.copy().set_requires_grad(true))).collect();
    for g in &grads[from..] {
        for ((_, p), gi) in live.iter().zip(g) {
            // Give the parameter a gradient buffer (a backward through p·0), then set it.
            if !p.grad().defined() {
                (p * 0.0).sum(Kind::Float).backward();
            }
            tch::no_grad(|| p.grad().copy_(gi));
        }
        opt.step(&[(LR, WD, &live[..1]), (LR, WD, &live[1..])]);
    }
    live
}

#[test]
fn adamw_matches_pytorch_and_resumes_exactly() {
    let (params, grads) = setup();
    let d = tmpdir();
    let mut inputs: Vec<(String, Tensor)> = params.iter().map(|(n, p)| (format!("param.{n}"), p.copy())).collect();
    for (s, g) in grads.iter().enumerate() {
        inputs.extend(params.iter().zip(g).map(|((n, _), gi)| (format!("grad.{s}.{n}"), gi.copy())));
    }
    inputs.sort_by(|a, b| a.0.cmp(&b.0));
    let (src, dst) = (d.path().join("in.safetensors"), d.path().join("out.safetensors"));
    famix::io::archive::save_safetensors(&src, &inputs, None).unwrap();
    let script = repo_root().join("tools/adamw_torch.py");
    let args: Vec<String> = [STEPS as f64, LR, WD, B1, B2, EPS].iter().map(|v| v.to_string()).collect();
    let out = std::process::Command::new(venv_python()).arg(script).arg(&src).arg(&dst).args(&args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let want = famix::io::archive::load_file(&dst).unwrap().into_map();

    let mut opt = AdamW::new((B1, B2), EPS);
    let live = run_famix(&params, &grads, 0, &mut opt);
    let state: HashMap<String, Tensor> = opt.state().into_iter().collect();
    let close = |what: &str, a: &Tensor, b: &Tensor| {
        let err = ((a - b).abs() / (b.abs() + 1.0)).max().double_value(&[]);
        assert!(err <= 1e-6, "{what}: relative difference {err:e}");
    };
    for (n, p) in &live {
        close(&format!("param {n}"), &p.detach(), &want[&format!("param.{n}")]);
        close(&format!("exp_avg {n}"), &state[&format!("exp_avg.{n}")], &want[&format!("exp_avg.{n}")]);
        close(&format!("exp_avg_sq {n}"), &state[&format!("exp_avg_sq.{n}")], &want[&format!("exp_avg_sq.{n}")]);
    }

    // Two steps, save and restore the state into a fresh optimiser, three more: the
    // same as five straight.
    let mut first = AdamW::new((B1, B2), EPS);
    let half = run_famix(&params, &grads[..2], 0, &mut first);
    let saved: HashMap<String, Tensor> = first.state().into_iter().collect();
    let mut resumed = AdamW::new((B1, B2), EPS);
    resumed.load_state(&saved, &half, Device::Cpu).unwrap();
    let mid: Vec<(String, Tensor)> = half.iter().map(|(n, p)| (n.clone(), p.detach())).collect();
    let end = run_famix(&mid, &grads, 2, &mut resumed);
    for ((n, a), (_, b)) in end.iter().zip(&live) {
        assert_eq!(max_abs_diff(&a.detach(), &b.detach()), 0.0, "{n} after resume");
    }
    // State that does not fit is refused.
    let wrong: HashMap<String, Tensor> = [("exp_avg.a".to_string(), Tensor::zeros([2], (Kind::Float, Device::Cpu)))].into();
    assert!(AdamW::new((B1, B2), EPS).load_state(&wrong, &half, Device::Cpu).unwrap_err().to_string().contains("shape"));
}
