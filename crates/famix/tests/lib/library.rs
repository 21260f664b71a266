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

/// A list of bad inputs and settings given through the library: each is refused with
/// the typed kind a caller can branch on, its message names the input or the setting,
/// and none panics (each call runs under `catch_unwind`, which must never trip).
#[test]
fn bad_inputs_and_settings_are_typed_errors_and_never_panic() {
    use famix::clip::{Clip, OutputStride, ResNetConfig, TextConfig};
    use famix::ErrorKind::{Incompatible, InvalidInput, InvalidSetting};
    let d = tmpdir();
    let ckpt = tiny_checkpoint(d.path());
    let model = Segmenter::load(&ckpt, Device::Cpu).unwrap();
    tch::manual_seed(1);
    let clip = Clip::random(
        &ResNetConfig { input_resolution: 64, ..ResNetConfig::tiny() },
        Some(&TextConfig::tiny()),
        Device::Cpu,
        OutputStride::Os32,
    );
    let save = |name: &str, tensors: Vec<(&str, Tensor)>| -> std::path::PathBuf {
        let p = d.path().join(name);
        let t: Vec<(String, Tensor)> = tensors.into_iter().map(|(k, t)| (k.to_string(), t)).collect();
        famix::io::archive::save_safetensors(&p, &t, None).unwrap();
        p
    };
    // A crafted CLIP: an empty tensor announcing a huge width, a 1-D token table.
    let huge =
        save("huge.safetensors", vec![("visual.layer1.0.conv1.weight", Tensor::zeros([1 << 30, 0, 1, 1], (Kind::Float, Device::Cpu)))]);
    let zeros = |shape: &[i64]| Tensor::zeros(shape, (Kind::Float, Device::Cpu));
    let mut crafted: Vec<(&str, Tensor)> = ["layer1", "layer2", "layer3", "layer4"]
        .iter()
        .map(|l| (Box::leak(format!("visual.{l}.0.conv1.weight").into_boxed_str()) as &str, zeros(&[4, 4, 1, 1])))
        .collect();
    crafted.push(("token_embedding.weight", zeros(&[8])));
    crafted.push(("positional_embedding", zeros(&[4, 8])));
    crafted.push(("text_projection", zeros(&[8, 8])));
    crafted.push(("transformer.resblocks.0.ln_1.weight", zeros(&[8])));
    let one_d_tokens = save("tokens.safetensors", crafted);
    let junk = d.path().join("junk.pth");
    std::fs::write(&junk, b"\x80\x02 not really a pickle at all").unwrap();
    let tokens = |t: Tensor| clip.encode_text(&t).map(|_| ());
    let cases: Vec<(&str, famix::ErrorKind, Call)> = vec![
        ("missing", InvalidInput, Box::new(|| Segmenter::load(d.path().join("missing.safetensors"), Device::Cpu).map(|_| ()))),
        ("a folder", InvalidInput, Box::new(|| Segmenter::load(d.path(), Device::Cpu).map(|_| ()))),
        ("junk.pth", InvalidInput, Box::new(|| Segmenter::load(&junk, Device::Cpu).map(|_| ()))),
        ("huge.safetensors", InvalidInput, Box::new(|| Clip::load(&huge, Device::Cpu, OutputStride::Os32).map(|_| ()))),
        ("tokens.safetensors", InvalidInput, Box::new(|| Clip::load(&one_d_tokens, Device::Cpu, OutputStride::Os32).map(|_| ()))),
        ("segmenter", InvalidInput, Box::new(|| Clip::load(&ckpt, Device::Cpu, OutputStride::Os32).map(|_| ()))),
        ("images", InvalidInput, Box::new(|| clip.encode_image(&Tensor::zeros([1, 3, 32, 32], (Kind::Float, Device::Cpu))).map(|_| ()))),
        ("images", InvalidInput, Box::new(|| clip.encode_image(&Tensor::zeros([3, 64, 64], (Kind::Float, Device::Cpu))).map(|_| ()))),
        ("images", InvalidInput, Box::new(|| clip.encode_image(&Tensor::zeros([1, 3, 64, 64], (Kind::Uint8, Device::Cpu))).map(|_| ()))),
        ("token ids", InvalidInput, Box::new(move || tokens(Tensor::full([1, 77], 1 << 20, (Kind::Int64, Device::Cpu))))),
        ("token ids", InvalidInput, Box::new(move || tokens(Tensor::full([1, 77], -3, (Kind::Int64, Device::Cpu))))),
        ("int64", InvalidInput, Box::new(move || tokens(Tensor::zeros([1, 77], (Kind::Float, Device::Cpu))))),
        ("context", InvalidInput, Box::new(move || tokens(Tensor::zeros([1, 5], (Kind::Int64, Device::Cpu))))),
        (
            "text",
            InvalidInput,
            Box::new(|| famix::clip::tokenizer::Tokenizer::global().tokenize(&"word ".repeat(200), 77, false).map(|_| ())),
        ),
        ("too small", InvalidInput, Box::new(|| model.predict(&Image8::new(3, 5, 3, 0), &PredictOptions::default()).map(|_| ()))),
        ("RGB", InvalidInput, Box::new(|| model.predict(&Image8::new(64, 64, 4, 0), &PredictOptions::default()).map(|_| ()))),
        (
            "scale",
            InvalidSetting,
            Box::new(|| model.predict(&Image8::new(64, 64, 3, 0), &PredictOptions { scale: -1.0, ..Default::default() }).map(|_| ())),
        ),
        (
            "too small",
            InvalidInput,
            Box::new(|| model.logits(&Tensor::zeros([1, 3, 4, 4], (Kind::Float, Device::Cpu)), 1.0, false).map(|_| ())),
        ),
        (
            "float images",
            InvalidInput,
            Box::new(|| model.logits(&Tensor::zeros([1, 2, 64, 64], (Kind::Float, Device::Cpu)), 1.0, false).map(|_| ())),
        ),
        (
            "scale",
            InvalidSetting,
            Box::new(|| model.logits(&Tensor::zeros([1, 3, 64, 64], (Kind::Float, Device::Cpu)), f64::NAN, false).map(|_| ())),
        ),
        ("image", InvalidInput, Box::new(|| Image8::decode_rgb(b"\x89PNG\r\n\x1a\n broken").map(|_| ()))),
        ("image", InvalidInput, Box::new(|| Image8::from_raw(4, 4, 3, vec![0; 5]).map(|_| ()))),
        ("style bank", InvalidInput, Box::new(|| famix::style::bank::StyleBank::load(&d.path().join("none.safetensors")).map(|_| ()))),
        ("style bank", InvalidInput, Box::new(|| famix::style::bank::StyleBank::load(&ckpt).map(|_| ()))),
        ("device", InvalidSetting, Box::new(|| famix::device::parse_device("cuda:x").map(|_| ()))),
        (
            "text tower",
            Incompatible,
            Box::new(|| {
                let image_only = Clip::random(&ResNetConfig::tiny(), None, Device::Cpu, OutputStride::Os32);
                image_only.encode_text(&Tensor::zeros([1, 77], (Kind::Int64, Device::Cpu))).map(|_| ())
            }),
        ),
    ];
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut problems = Vec::new();
    for (named, want, call) in &cases {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(call)) {
            Err(_) => problems.push(format!("{named}: PANICKED")),
            Ok(Ok(())) => problems.push(format!("{named}: accepted")),
            Ok(Err(e)) => {
                let text = format!("{e:#}");
                if e.kind() != *want || !text.contains(named) {
                    problems.push(format!("{named}: {:?} (want {want:?}): {text}", e.kind()));
                }
            }
        }
    }
    std::panic::set_hook(quiet);
    assert!(problems.is_empty(), "{problems:#?}");
}

/// One library call of a table of cases.
type Call<'a> = Box<dyn Fn() -> famix::Result<()> + 'a>;
