//! What famix prints is famix's: a training run, an evaluation and a prediction leave
//! no PyTorch warning on stderr (PyTorch 2.11 warns on every call of deprecated APIs,
//! e.g. `Tensor.pin_memory(device)`, which would tear the progress bars apart), and
//! `--deterministic --no-tf32` change nothing on the CPU, where famix's kernels are
//! deterministic and fp32 is IEEE fp32 already (tolerance 0).
use crate::common;

use common::*;

/// Lines that libtorch's warning handler writes (`[W1202 12:00:00.000 file.cpp:40] Warning: ...`)
/// or that mention a deprecation.
fn torch_warnings(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| (l.starts_with("[W") && l.contains(']')) || l.contains("Warning:") || l.to_lowercase().contains("deprecat"))
        .collect()
}

#[test]
fn train_eval_and_predict_print_no_pytorch_warnings() {
    let d = tmpdir();
    let bank = reference_bank(d.path());
    let run = d.path().join("run");
    let (code, _, err) = run_args(&train_args(&run, &bank, &["--iters", "2", "--log-interval", "1", "--workers", "1"]));
    assert_eq!(code, 0, "{err}");
    assert!(torch_warnings(&err).is_empty(), "train printed PyTorch warnings:\n{err}");
    let (code, _, err) = eval_cityscapes_mini(&run.join("latest.safetensors"), &["--limit", "1"]);
    assert_eq!(code, 0, "{err}");
    assert!(torch_warnings(&err).is_empty(), "eval printed PyTorch warnings:\n{err}");
    let out = d.path().join("pred");
    let img = fixture("img_a.png");
    let ckpt = run.join("latest.safetensors");
    let (code, _, err) = predict_cpu(&ckpt, &out, &img, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(torch_warnings(&err).is_empty(), "predict printed PyTorch warnings:\n{err}");
}

#[test]
fn deterministic_and_no_tf32_are_recorded_and_change_nothing_on_the_cpu() {
    let d = tmpdir();
    let bank = reference_bank(d.path());
    let (plain, exact) = (d.path().join("plain"), d.path().join("exact"));
    let extra = ["--iters", "2", "--workers", "1"];
    let (code, _, err) = run_args(&train_args(&plain, &bank, &extra));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run_args(&train_args(&exact, &bank, &[&extra[..], &["--deterministic", "--no-tf32"]].concat()));
    assert_eq!(code, 0, "{err}");
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(exact.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["numerics"], serde_json::json!({"deterministic": true, "tf32": false}));
    let plain_cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(plain.join("config.json")).unwrap()).unwrap();
    assert_eq!(plain_cfg["numerics"], serde_json::json!({"deterministic": false, "tf32": true}));
    let load =
        |r: &std::path::Path| famix::model::checkpoint::load(&r.join("latest"), tch::Device::Cpu, None).unwrap().model.vs.variables();
    let (a, b) = (load(&plain), load(&exact));
    for (n, t) in &b {
        assert_eq!(max_abs_diff(t, &a[n]), 0.0, "{n} differs with --deterministic on the CPU");
    }
    // They define the run: given again with --resume they are refused.
    let (code, _, err) = run_famix(&["train", "--resume", plain.to_str().unwrap(), "--deterministic", "--device", "cpu"]);
    assert_ne!(code, 0);
    assert!(err.contains("--deterministic"), "{err}");
    // Evaluation under the deterministic mode (every kernel it uses has a deterministic form).
    let (code, _, err) = eval_cityscapes_mini(&exact.join("latest.safetensors"), &["--limit", "1", "--deterministic", "--no-tf32"]);
    assert_eq!(code, 0, "{err}");
}
