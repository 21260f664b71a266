//! The library API as a user calls it: `Segmenter::load` + `predict`, typed errors,
//! progress reports instead of printing, and the shared settings.
use crate::common;

use common::*;
use famix::model::checkpoint;
use famix::progress::Recorder;
use famix::{Error, Image8, PredictOptions, Segmenter};
use tch::{Device, Kind, Tensor};

fn tiny_checkpoint(dir: &std::path::Path) -> std::path::PathBuf {
    tch::manual_seed(7);
    checkpoint::save_random_tiny(&dir.join("tiny"), 19).unwrap()
}

/// `predict` (one image) and `predict_ids` (a batch) agree exactly with the
/// segmenter's own logits argmax on the reference checkpoint; `keep_logits` returns
/// those logits (tolerance 0: the same computation).
#[test]
fn predict_is_the_argmax_of_the_segmenter_logits() {
    let model = Segmenter::load(fixture("seg_a_ref.pth"), Device::Cpu).unwrap();
    let img = Image8::open_rgb(&fixture("img_a.png")).unwrap();
    let opts = PredictOptions { keep_logits: true, ..Default::default() };
    let p = model.predict(&img, &opts).unwrap();
    assert_eq!((p.train_ids.width, p.train_ids.height, p.train_ids.channels), (img.width, img.height, 1));
    let x = famix::model::inference::normalize_u8(&img.to_tensor_u8().unsqueeze(0), Device::Cpu);
    let logits = model.predict_logits(&x, 1.0, false);
    assert_eq!(max_abs_diff(&logits, p.logits.as_ref().unwrap()), 0.0);
    let want = Vec::<u8>::try_from(logits.argmax(1, false).to_kind(Kind::Uint8).flatten(0, -1)).unwrap();
    assert_eq!(p.train_ids.data, want);
    // A batch of two copies gives the same ids twice.
    let batch = Tensor::stack(&[img.to_tensor_u8(), img.to_tensor_u8()], 0);
    let (ids, none) = model.predict_ids(&batch, &PredictOptions::default()).unwrap();
    assert!(none.is_none());
    assert_eq!(ids.size(), vec![2, img.height as i64, img.width as i64]);
    let got = Vec::<u8>::try_from(ids.get(1).to_kind(Kind::Uint8).flatten(0, -1)).unwrap();
    assert_eq!(got, want);
}

#[test]
fn bad_test_time_inputs_are_errors_not_panics() {
    let d = tmpdir();
    let model = Segmenter::load(tiny_checkpoint(d.path()), Device::Cpu).unwrap();
    let img = Image8::new(64, 48, 3, 9);
    for scale in [f64::NAN, f64::INFINITY, 0.0, 0.001, -1.0] {
        let e = model.predict(&img, &PredictOptions { scale, ..Default::default() }).expect_err("refused");
        assert!(matches!(e, Error::InvalidSetting { ref name, .. } if name == "scale"), "{scale}: {e}");
    }
    for (w, h) in [(1, 1), (3, 5), (15, 200)] {
        let e = model.predict(&Image8::new(w, h, 3, 0), &PredictOptions::default()).expect_err("refused");
        assert!(e.to_string().contains("too small"), "{e}");
    }
    let e = model.predict(&Image8::new(64, 64, 1, 0), &PredictOptions::default()).expect_err("refused");
    assert!(e.to_string().contains("RGB"), "{e}");
}

#[test]
fn callers_can_match_on_error_kinds() {
    let d = tmpdir();
    let ckpt = tiny_checkpoint(d.path());
    // A checkpoint from a newer famix.
    let sd = famix::io::archive::load_file(&ckpt).unwrap();
    let mut meta: serde_json::Value = serde_json::from_str(&sd.metadata["famix"]).unwrap();
    meta["format_version"] = 99.into();
    let mut tensors: Vec<(String, Tensor)> = sd.tensors.into_iter().collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let newer = d.path().join("newer.safetensors");
    let md = [("famix".to_string(), meta.to_string())].into_iter().collect();
    famix::io::archive::save_safetensors(&newer, &tensors, Some(md)).unwrap();
    match Segmenter::load(&newer, Device::Cpu) {
        Err(Error::CheckpointTooNew { version: 99, supported: 1, .. }) => {}
        other => panic!("expected CheckpointTooNew, got {:?}", other.err()),
    }
    // Weights that do not fit the model: every problem listed, nothing loaded.
    let missing: Vec<(String, Tensor)> =
        tensors.iter().filter(|(k, _)| !k.starts_with("classifier.project")).map(|(k, t)| (k.clone(), t.shallow_clone())).collect();
    let cut = d.path().join("cut.safetensors");
    famix::io::archive::save_safetensors(&cut, &missing, Some([("famix".to_string(), sd.metadata["famix"].clone())].into_iter().collect()))
        .unwrap();
    match Segmenter::load(&cut, Device::Cpu) {
        Err(Error::KeyMismatch { missing, unexpected, .. }) => {
            assert!(missing.iter().all(|k| k.starts_with("classifier.project")) && !missing.is_empty(), "{missing:?}");
            assert!(unexpected.is_empty());
        }
        other => panic!("expected KeyMismatch, got {:?}", other.err()),
    }
    // Not a checkpoint at all.
    let junk = d.path().join("junk.pth");
    std::fs::write(&junk, b"this is not a checkpoint at all").unwrap();
    match Segmenter::load(&junk, Device::Cpu) {
        Err(Error::Unreadable { path, .. }) => assert_eq!(path, junk),
        other => panic!("expected Unreadable, got {:?}", other.err()),
    }
    // A dataset root in the wrong layout.
    let e = famix::data::Dataset::open(famix::data::DatasetKind::Cityscapes, d.path(), "val", None).err().unwrap();
    assert!(matches!(e, Error::DatasetLayout { .. }), "{e}");
    assert!(e.to_string().contains("not found"), "{e}");
}

/// Skipped inputs reach the caller as notices and in the report; nothing is printed
/// by the library (the test binary's stderr is not checked here, the CLI's is in
/// tests/data.rs).
#[test]
fn evaluation_reports_skips_through_the_observer() {
    let d = tmpdir();
    let root = d.path().join("ds");
    for (i, ok) in [(0, true), (1, false), (2, true)] {
        let img = root.join(format!("images/val/{i}.png"));
        let lbl = root.join(format!("labels/val/{i}.png"));
        Image8::new(40, 40, 3, 100).save_png(&img).unwrap();
        if ok {
            Image8::new(40, 40, 1, 1).save_png(&lbl).unwrap();
        } else {
            std::fs::write(&lbl, b"\x89PNG truncated").unwrap();
        }
    }
    let ds = famix::data::Dataset::open(famix::data::DatasetKind::Folder, &root, "val", None).unwrap();
    let model = Segmenter::load(tiny_checkpoint(d.path()), Device::Cpu).unwrap();
    let rec = Recorder::default();
    let opts = famix::eval::EvalOptions { skip_bad: true, ..Default::default() };
    let rep = famix::eval::evaluate(&model, &ds, &opts, &rec).unwrap();
    assert_eq!((rep.images, rep.skipped.len()), (2, 1));
    let notices = rec.notices.lock().unwrap();
    assert_eq!(notices.len(), 1);
    assert!(notices[0].contains("1.png"), "{notices:?}");
    assert_eq!(rec.advanced.load(std::sync::atomic::Ordering::Relaxed), 3);
    // Without skip_bad the error names the option.
    let e = famix::eval::evaluate(&model, &ds, &Default::default(), &famix::Silent).err().unwrap();
    assert!(format!("{e:#}").contains("`skip_bad`"), "{e:#}");
    // --limit 0 evaluates nothing and is refused.
    let zero = famix::eval::EvalOptions { limit: Some(0), ..Default::default() };
    assert!(famix::eval::evaluate(&model, &ds, &zero, &famix::Silent).is_err());
}

/// The `famix` command and the library share one definition of the tiny
/// architecture and of the reference's training settings.
#[test]
fn settings_have_one_source() {
    use famix::train::TrainConfig;
    let r = TrainConfig::reference("c.pt".into(), String::new(), famix::data::DatasetKind::Gta5, "d".into(), Some("b".into()));
    assert_eq!((r.iters, r.batch, r.crop, r.lr, r.backbone_lr_mult, r.momentum), (40_000, 8, 768, 0.1, 0.1, 0.9));
    assert_eq!(r.freeze, famix::model::FreezePolicy::Synthetic);
    famix::train::check_config(&r).unwrap();
    for (field, bad) in [
        ("lr", TrainConfig { lr: f64::NAN, ..r.clone() }),
        ("label_smoothing", TrainConfig { label_smoothing: 2.0, ..r.clone() }),
        ("grid", TrainConfig { grid: 0, ..r.clone() }),
    ] {
        match famix::train::check_config(&bad) {
            Err(Error::InvalidSetting { name, .. }) => assert_eq!(name, field),
            other => panic!("{field}: {other:?}"),
        }
    }
    // The demo's and bench's tiny model is the one the checkpoint helper writes.
    let d = tmpdir();
    let m = Segmenter::load(tiny_checkpoint(d.path()), Device::Cpu).unwrap();
    assert_eq!(m.config().backbone.layers, famix::clip::ResNetConfig::tiny().layers);
    assert_eq!(m.config().head, famix::model::HeadConfig::tiny(19));
}

/// Every error kind a caller can act on is reachable from a real bad input, and
/// `Error::kind` sorts it the same through context layers.
#[test]
fn error_kinds_sort_real_failures() {
    use famix::ErrorKind;
    let d = tmpdir();
    let missing = d.path().join("nothing.safetensors");
    let e = famix::style::bank::StyleBank::load(&missing).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    let e = famix::device::parse_device("tpu").err().unwrap();
    assert_eq!(e.kind(), ErrorKind::InvalidSetting, "{e}");
    let _held = famix::io::FolderLock::acquire(&d.path().join("run"), "a test").unwrap();
    let e = famix::io::FolderLock::acquire(&d.path().join("run"), "a second writer").err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    assert!(e.to_string().contains("in use by another famix process"), "{e}");
    let junk = d.path().join("junk.pth");
    std::fs::write(&junk, b"not a checkpoint").unwrap();
    let e = Segmenter::load(&junk, Device::Cpu).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
}
