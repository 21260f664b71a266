//! `famix export`: ONNX Runtime (the `onnxruntime` package pinned in
//! tools/requirements-test.txt, run by tools/run_onnx.py) reproduces famix's own
//! logits on exported famix and reference checkpoints, at two input sizes and several
//! output strides: max abs difference ≤ 1e-4 and the same argmax everywhere.
use crate::common;

use std::path::Path;

use common::*;
use tch::{Device, Kind, Tensor};

/// Runs `model` on `input` (saved as .npy) in ONNX Runtime; returns the output and the
/// model's metadata.
pub(crate) fn onnx_run(dir: &Path, model: &Path, input: &Tensor) -> (Tensor, serde_json::Value) {
    let (i, o) = (dir.join("in.npy"), dir.join("out.npy"));
    input.write_npy(&i).unwrap();
    let script = repo_root().join("tools/run_onnx.py");
    let out = std::process::Command::new(venv_python()).arg(script).arg(model).arg(&i).arg(&o).output().unwrap();
    assert!(out.status.success(), "onnxruntime: {}", String::from_utf8_lossy(&out.stderr));
    (Tensor::read_npy(&o).unwrap(), serde_json::from_slice(&out.stdout).unwrap())
}

fn export(ckpt: &Path, out: &Path, extra: &[&str]) {
    let args: Vec<&str> = ["export", "--checkpoint", ckpt.to_str().unwrap(), "--out", out.to_str().unwrap()]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    let (code, _, err) = run_famix(&args);
    assert_eq!(code, 0, "{err}");
}

/// Logits of famix and ONNX Runtime agree (1e-4) with identical argmax, at two sizes.
fn check_logits(dir: &Path, ckpt: &Path, os: Option<i64>) {
    let onnx = dir.join("model.onnx");
    let os_flag = os.map(|v| v.to_string());
    let extra: Vec<&str> = os_flag.as_deref().map(|v| vec!["--output-stride", v]).unwrap_or_default();
    export(ckpt, &onnx, &extra);
    let stride = os.map(|v| famix::clip::OutputStride::from_int(v).unwrap());
    let model = famix::model::checkpoint::load(ckpt, Device::Cpu, stride).unwrap().model;
    for (n, h, w) in [(1, 64, 96), (2, 80, 112)] {
        tch::manual_seed(h);
        let x = Tensor::randn([n, 3, h, w], (Kind::Float, Device::Cpu));
        let want = tch::no_grad(|| model.forward(&x, false, None));
        let (got, meta) = onnx_run(dir, &onnx, &x);
        assert_eq!(got.size(), want.size());
        let d = max_abs_diff(&got, &want);
        assert!(d <= 1e-4, "{} at {h}x{w}: max abs diff {d:e} > 1e-4", ckpt.display());
        let same = got.argmax(1, false).eq_tensor(&want.argmax(1, false)).all().int64_value(&[]);
        assert_eq!(same, 1, "{} at {h}x{w}: argmax differs", ckpt.display());
        assert_eq!(meta["famix.output_stride"], model.config().output_stride.value().to_string());
        assert!(meta["famix.input"].as_str().unwrap().contains("0.48145466"));
    }
}

#[test]
fn onnx_runtime_reproduces_famix_logits() {
    let d = tmpdir();
    // A famix checkpoint (tiny architecture) at its own OS16 and at OS8 (dilated
    // layer3 and layer4, ASPP rates 12/24/36), and a reference FAMix .pth.
    tch::manual_seed(3);
    let tiny = famix::model::checkpoint::save_random_tiny(&d.path().join("tiny"), 19).unwrap();
    check_logits(d.path(), &tiny, None);
    check_logits(d.path(), &tiny, Some(8));
    check_logits(d.path(), &fixture("seg_a_ref.pth"), None);
}

/// `--include-preprocessing --output trainid`: uint8 RGB in, train ids out, equal to
/// `Segmenter::predict` on the same image; fixed sizes are honoured; bad flags are refused.
#[test]
fn onnx_with_preprocessing_gives_famix_predictions() {
    let d = tmpdir();
    let ckpt = fixture("seg_a_ref.pth");
    let onnx = d.path().join("ids.onnx");
    export(&ckpt, &onnx, &["--include-preprocessing", "--output", "trainid", "--height", "64", "--width", "96", "--opset", "13"]);
    let model = famix::Segmenter::load(&ckpt, Device::Cpu).unwrap();
    let img = famix::Image8::open_rgb(&fixture("img_a.png")).unwrap().resize(96, 64, famix::imageops::Filter::Bilinear);
    let want = model.predict(&img, &famix::PredictOptions::default()).unwrap().train_ids;
    let x = Tensor::from_slice(&img.data).view([1, 64, 96, 3]);
    let (got, meta) = onnx_run(d.path(), &onnx, &x);
    assert_eq!(got.size(), vec![1, 64, 96]);
    let got: Vec<i64> = Vec::try_from(got.flatten(0, -1)).unwrap();
    let same = got.iter().zip(&want.data).filter(|(a, b)| **a == **b as i64).count();
    assert_eq!(same, got.len(), "{} of {} pixels agree", same, got.len());
    assert_eq!(meta["famix.output"], "trainid");
    for (flags, msg) in [(vec!["--opset", "9"], "--opset"), (vec!["--height", "2"], "--height")] {
        let args: Vec<&str> = ["export", "--checkpoint", ckpt.to_str().unwrap(), "--out", "/dev/null"].into_iter().chain(flags).collect();
        let (code, _, err) = run_famix(&args);
        assert!(code != 0 && err.contains(msg), "{err}");
    }
}
