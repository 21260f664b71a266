//! The ONNX Runtime engine computes what libtorch computes: on the reference `.pth`
//! fixture and on famix checkpoints at output strides 8 and 16 (batch-norm statistics
//! and affine parameters randomised, so folding matters), its logits are within 1e-4 (max abs) of libtorch's
//! plain path and its train ids identical wherever libtorch's two best logits are more
//! than 2e-4 apart (a nearer tie may go either way), at test scale 1, 0.5 and with the ensemble,
//! from both the session built for the first input size and the any-size one;
//! `famix predict` writes byte-identical PNGs with either engine; unusable settings and
//! a missing library are reported, and `auto` falls back to libtorch. (The demo's
//! trained model is checked in tests/demo.rs.)
use crate::common;

use common::*;
use famix::engine::{attach, Engine};
use famix::model::checkpoint;
use famix::{Precision, PredictOptions, Segmenter};
use tch::{Device, Kind, Tensor};

const TOL: f64 = 1e-4;

#[test]
fn onnxruntime_matches_libtorch() {
    let d = tmpdir();
    tch::manual_seed(5);
    let tiny = checkpoint::save_random_tiny(&d.path().join("tiny"), 19).unwrap();
    let cases = [
        (fixture("seg_a_ref.pth"), None),
        (tiny.clone(), Some(famix::clip::OutputStride::Os16)),
        (tiny, Some(famix::clip::OutputStride::Os8)),
    ];
    for (path, os) in cases {
        let mut m = checkpoint::load(&path, Device::Cpu, os).unwrap().model;
        randomise_bn(&m);
        // The first size an engine sees gets a session of its own (64×96 divides by 32:
        // its resizes take integer scales); every later size runs on the any-size one.
        let inputs: Vec<_> = [(64, 96), (72, 104)]
            .into_iter()
            .flat_map(|hw| [(hw, 1.0, false), (hw, 0.5, false), (hw, 0.5, true)])
            .map(|((h, w), scale, ensemble)| {
                let x = Tensor::randint(256, [2, 3, h, w], (Kind::Uint8, Device::Cpu));
                (x, PredictOptions { scale, ensemble, keep_logits: true, ..Default::default() })
            })
            .collect();
        m.set_engine(None);
        let expected: Vec<_> = inputs.iter().map(|(x, opts)| m.predict_ids(x, opts).unwrap()).collect();
        let (engine, note) = attach(&mut m, Engine::OnnxRuntime, Precision::Fp32).unwrap();
        assert_eq!((engine, note), (Engine::OnnxRuntime, None));
        assert_eq!(m.engine_name(), "onnxruntime");
        // Each case twice: the second call reuses the sessions the first one built.
        for ((x, opts), (ids_t, logits_t)) in inputs.iter().chain(&inputs).zip(expected.iter().chain(&expected)) {
            let (ids_o, logits_o) = m.predict_ids(x, opts).unwrap();
            let what = format!("{} os {os:?} {:?} scale {} ensemble {}", path.display(), x.size(), opts.scale, opts.ensemble);
            let logits_t = logits_t.as_ref().unwrap();
            assert_close(&what, &logits_o.unwrap(), logits_t, TOL);
            // Logits within TOL can only swap the argmax where the top two are within 2·TOL.
            let (top, _) = logits_t.topk(2, 1, true, true);
            let decided = (top.select(1, 0) - top.select(1, 1)).gt(2.0 * TOL);
            let differ = ids_o.ne_tensor(ids_t).logical_and(&decided).sum(Kind::Int64).int64_value(&[]);
            assert_eq!(differ, 0, "{what}: train ids differ where the logits decide");
        }
    }
}

#[test]
fn engine_settings_are_checked() {
    let d = tmpdir();
    let mut m = Segmenter::load(checkpoint::save_random_tiny(&d.path().join("tiny"), 19).unwrap(), Device::Cpu).unwrap();
    // ONNX Runtime runs fp32: bf16 is refused when asked for, and auto stays on libtorch.
    let e = attach(&mut m, Engine::OnnxRuntime, Precision::Bf16).unwrap_err();
    assert!(matches!(e, famix::Error::InvalidSetting { ref name, .. } if name == "engine"), "{e}");
    assert_eq!(attach(&mut m, Engine::Auto, Precision::Bf16).unwrap().0, Engine::Torch);
    assert_eq!(attach(&mut m, Engine::Auto, Precision::Fp32).unwrap().0, Engine::OnnxRuntime);
    assert_eq!(attach(&mut m, Engine::Torch, Precision::Fp32).unwrap().0, Engine::Torch);
    assert_eq!(m.engine_name(), "torch");
}

/// A library that cannot be found: `--engine onnxruntime` says where it looked and how
/// to install it; `auto` notes it and runs on libtorch (a separate process, because
/// the library is loaded once per process).
#[test]
fn a_missing_library_is_reported_and_auto_falls_back() {
    let d = tmpdir();
    tch::manual_seed(2);
    let ckpt = checkpoint::save_random_tiny(&d.path().join("tiny"), 19).unwrap();
    let img = fixture("img_a.png");
    let run = |engine: &str, out: &str| {
        let out = d.path().join(out);
        let mut c = famix_command();
        c.args(["predict", "--checkpoint", ckpt.to_str().unwrap(), "--out", out.to_str().unwrap(), "--device", "cpu"])
            .args(["--engine", engine, img.to_str().unwrap()])
            .env("FAMIX_ONNXRUNTIME", "/nonexistent/libonnxruntime.so");
        let o = c.output().unwrap();
        (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stderr).to_string())
    };
    let (code, err) = run("onnxruntime", "a");
    assert_ne!(code, 0);
    assert!(err.contains("FAMIX_ONNXRUNTIME") && err.contains("no such file"), "{err}");
    let (code, err) = run("auto", "b");
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("running on libtorch"), "{err}");
}

/// `famix predict` writes the same PNGs with either engine (byte for byte).
#[test]
fn predict_outputs_are_identical_across_engines() {
    let d = tmpdir();
    let img = fixture("img_a.png");
    let ckpt = fixture("seg_a_ref.pth");
    for engine in ["torch", "onnxruntime"] {
        let out = d.path().join(engine);
        let (code, _, err) = predict_cpu(&ckpt, &out, &img, &["--engine", engine]);
        assert_eq!(code, 0, "{err}");
    }
    for f in ["img_a_trainid.png", "img_a_color.png"] {
        let (a, b) = (std::fs::read(d.path().join("torch").join(f)).unwrap(), std::fs::read(d.path().join("onnxruntime").join(f)).unwrap());
        assert!(a == b, "{f} differs between engines");
    }
}

/// `--int8` takes a calibration file and refuses, naming the file or flag: a missing
/// file, a file that is not a calibration, a calibration of another network, and
/// `--engine torch` with it.
#[test]
fn int8_calibrations_are_checked() {
    let d = tmpdir();
    let (ckpt, img) = (fixture("seg_a_ref.pth"), fixture("img_a.png"));
    let predict = |extra: &[&str]| {
        let out = d.path().join("out");
        let mut args = vec!["predict", "--checkpoint", ckpt.to_str().unwrap(), img.to_str().unwrap(), "--out", out.to_str().unwrap()];
        args.extend_from_slice(extra);
        run_famix(&args)
    };
    let missing = d.path().join("missing.json");
    let (code, _, err) = predict(&["--int8", missing.to_str().unwrap()]);
    assert!(code != 0 && err.contains("missing.json"), "{err}");
    let junk = d.path().join("junk.json");
    std::fs::write(&junk, "{\"ranges\": 3}").unwrap();
    let (code, _, err) = predict(&["--int8", junk.to_str().unwrap()]);
    assert!(code != 0 && err.contains("junk.json") && err.contains("not a famix int8 calibration"), "{err}");
    // A calibration of the tiny random model does not fit the reference .pth.
    tch::manual_seed(2);
    let tiny = checkpoint::save_random_tiny(&d.path().join("tiny"), 19).unwrap();
    let cal = d.path().join("tiny_int8.json");
    let (code, _, err) = run_famix(&[
        "calibrate",
        "--checkpoint",
        tiny.to_str().unwrap(),
        "--images",
        img.to_str().unwrap(),
        "--out",
        cal.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = predict(&["--int8", cal.to_str().unwrap()]);
    assert!(code != 0 && err.contains("tiny_int8.json") && err.contains("another network"), "{err}");
    let (code, _, err) = predict(&["--int8", cal.to_str().unwrap(), "--engine", "torch"]);
    assert!(code != 0 && err.contains("--int8"), "{err}");
    // With a fitting calibration the command runs and writes the ids.
    let (code, _, err) = run_famix(&[
        "predict",
        "--checkpoint",
        tiny.to_str().unwrap(),
        img.to_str().unwrap(),
        "--out",
        d.path().join("o2").to_str().unwrap(),
        "--int8",
        cal.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(d.path().join("o2/img_a_trainid.png").exists());
}
