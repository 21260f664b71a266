//! Hostile and careless input through the command line: every case ends with a clear
//! error (or a reported, skipped item) and a non-zero exit where something was wrong —
//! never a panic, an abort or silently wrong output.
use crate::common;

use std::path::Path;

use common::*;
use famix::Image8;

fn tiny_checkpoint(dir: &Path) -> String {
    tch::manual_seed(3);
    famix::model::checkpoint::save_random_tiny(&dir.join("tiny"), 19).unwrap().to_str().unwrap().to_string()
}

fn jpeg(img: &Image8) -> Vec<u8> {
    let mut buf = Vec::new();
    image::codecs::jpeg::JpegEncoder::new(&mut buf)
        .encode(&img.data, img.width as u32, img.height as u32, image::ExtendedColorType::Rgb8)
        .unwrap();
    buf
}

fn no_panic(err: &str) {
    assert!(!err.contains("panicked") && !err.contains("internal error") && !err.contains("RUST_BACKTRACE"), "{err}");
}

#[test]
fn predict_keeps_every_output_and_reports_what_it_cannot_read() {
    let d = tmpdir();
    let ckpt = tiny_checkpoint(d.path());
    let inp = d.path().join("in");
    let img = Image8::new(64, 48, 3, 90);
    img.save_png(&inp.join("x.png")).unwrap();
    std::fs::write(inp.join("x.jpg"), jpeg(&img)).unwrap();
    let j = jpeg(&img);
    std::fs::write(inp.join("cut.jpg"), &j[..j.len() / 2]).unwrap(); // truncated JPEG
    Image8::new(3, 5, 3, 0).save_png(&inp.join("tiny.png")).unwrap(); // too small for the network
    img.save_png(&d.path().join("d1/y.png")).unwrap();
    img.save_png(&d.path().join("d2/y.png")).unwrap();
    std::os::unix::fs::symlink(&inp, inp.join("loop")).unwrap(); // a symlink loop
    let out = d.path().join("out");
    let (code, _, err) = run_famix(&[
        "predict",
        "--checkpoint",
        &ckpt,
        "--out",
        out.to_str().unwrap(),
        "--device",
        "cpu",
        inp.to_str().unwrap(),
        d.path().join("d1/y.png").to_str().unwrap(),
        d.path().join("d2/y.png").to_str().unwrap(),
    ]);
    no_panic(&err);
    assert_eq!(code, 2, "failures must show in the exit code: {err}");
    assert!(err.contains("cut.jpg") && err.contains("truncated"), "{err}");
    assert!(err.contains("tiny.png") && err.contains("too small"), "{err}");
    for stem in ["x_png", "x_jpg", "y_png", "y_png_2"] {
        assert!(out.join(format!("{stem}_trainid.png")).exists(), "{stem} missing: {err}");
    }
    let written =
        std::fs::read_dir(&out).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with("_trainid.png")).count();
    assert_eq!(written, 4, "the symlink loop must not list files twice");
    assert!(err.contains("4 predictions written") && err.contains("2 failed"), "{err}");
}

#[test]
fn user_values_out_of_range_are_refused_by_name() {
    let d = tmpdir();
    let ckpt = tiny_checkpoint(d.path());
    let eval = |extra: &[&str]| eval_cityscapes_mini(Path::new(&ckpt), extra);
    for (extra, name) in [
        (&["--limit", "0"][..], "--limit"),
        (&["--scale", "nan"][..], "--scale"),
        (&["--scale", "0.001"][..], "--scale"),
        (&["--scale", "inf"][..], "--scale"),
    ] {
        let (code, _, err) = eval(extra);
        no_panic(&err);
        assert_ne!(code, 0, "{extra:?}");
        assert!(err.contains(name), "{extra:?}: {err}");
    }
    let (code, _, err) = run_famix(&["tokenize", "--context-length", "100000000000", "--pad", "a photo"]);
    no_panic(&err);
    assert_ne!(code, 0);
    assert!(err.contains("--context-length"), "{err}");
}

fn train_args(run: &Path, bank: &Path, extra: &[&str]) -> Vec<String> {
    let mut v = vec!["--iters", "2", "--workers", "1"];
    v.extend_from_slice(extra);
    common::train_args(run, bank, &v)
}

#[test]
fn training_and_mining_settings_are_validated_before_any_work() {
    let d = tmpdir();
    let bank = reference_bank(d.path());
    for (extra, name) in [
        (&["--lr", "NaN"][..], "--lr"),
        (&["--lr=-1"][..], "--lr"),
        (&["--label-smoothing", "2"][..], "--label-smoothing"),
        (&["--momentum", "1"][..], "--momentum"),
        (&["--grid", "0"][..], "--grid"),
        (&["--val-dataset", "cityscapes", "--val-root", "/nonexistent", "--val-limit", "0"][..], "--val-limit"),
    ] {
        let run = d.path().join("r");
        let args = train_args(&run, &bank, extra);
        let (code, _, err) = run_args(&args);
        no_panic(&err);
        assert_ne!(code, 0, "{extra:?}");
        assert!(err.contains(name), "{extra:?}: {err}");
        assert!(!run.join("config.json").exists(), "{extra:?}: a refused run wrote files");
    }
    // Labels beyond --num-classes stop the run by name (they would crash the loss).
    let run = d.path().join("k5");
    let args = train_args(&run, &bank, &["--num-classes", "5", "--no-styles"]);
    let (code, _, err) = run_args(&args);
    no_panic(&err);
    assert_ne!(code, 0);
    assert!(err.contains("--num-classes 5"), "{err}");
    // A bank with a non-finite style is refused wherever it is read.
    let mut b = famix::style::bank::StyleBank::new(16, famix::data::classes::ClassSet::cityscapes());
    b.push(0, vec![0.0; 16], vec![f32::NAN; 16], None);
    let bad = d.path().join("neg.safetensors");
    b.save(&bad).unwrap();
    let (code, _, err) = run_famix(&["styles", "show", bad.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("non-finite"), "{err}");
    // Mining settings.
    for (extra, name) in [
        (&["--batch", "0"][..], "--batch"),
        (&["--crop", "0"][..], "--crop"),
        (&["--grid", "0"][..], "--grid"),
        (&["--iters", "0"][..], "--iters"),
        (&["--lr", "nan"][..], "--lr"),
    ] {
        let out = d.path().join("m.safetensors");
        let (code, _, err) = run_args(&common::mine_args(&out, extra));
        no_panic(&err);
        assert_ne!(code, 0, "{extra:?}");
        assert!(err.contains(name), "{extra:?}: {err}");
        assert!(!out.exists());
    }
}

#[test]
fn dataset_layout_problems_are_reported() {
    let d = tmpdir();
    let ckpt = tiny_checkpoint(d.path());
    // A folder dataset with split sub-folders but not the one asked for.
    let root = d.path().join("ds");
    Image8::new(64, 64, 3, 1).save_png(&root.join("images/train/a.png")).unwrap();
    Image8::new(64, 64, 1, 1).save_png(&root.join("labels/train/a.png")).unwrap();
    let (code, _, err) = eval_cpu(Path::new(&ckpt), "folder", &root, &["--split", "val"]);
    assert_ne!(code, 0);
    assert!(err.contains("split \"val\" not found") && err.contains("train"), "{err}");
    // An empty split makes `data check` fail.
    std::fs::create_dir_all(root.join("images/val")).unwrap();
    std::fs::create_dir_all(root.join("labels/val")).unwrap();
    let (code, out, _) = run_famix(&["data", "check", "--dataset", "folder", "--data-root", root.to_str().unwrap(), "--split", "val"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("no image/label pairs"), "{out}");
    // Images without labels are named when evaluating.
    Image8::new(64, 64, 3, 1).save_png(&root.join("images/train/b.png")).unwrap();
    let (code, _, err) = eval_cpu(Path::new(&ckpt), "folder", &root, &["--split", "train"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("did not pair up") && err.contains("b.png"), "{err}");
}

#[test]
fn crafted_checkpoint_headers_are_refused_before_allocation() {
    let d = tmpdir();
    let ckpt = tiny_checkpoint(d.path());
    let f = famix::io::archive::load_file(Path::new(&ckpt)).unwrap();
    let mut tensors: Vec<(String, tch::Tensor)> = f.tensors.into_iter().collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    for (field, value) in [
        ("aspp_channels", serde_json::json!(1_i64 << 40)),
        ("aspp_channels", serde_json::json!(-5)),
        ("width", serde_json::json!(1_i64 << 30)),
        ("layers", serde_json::json!([100000, 1, 2, 2])),
    ] {
        let mut meta: serde_json::Value = serde_json::from_str(&f.metadata["famix"]).unwrap();
        if field == "aspp_channels" {
            meta["head"][field] = value.clone();
        } else {
            meta["backbone"][field] = value.clone();
        }
        let p = d.path().join("crafted.safetensors");
        let md = [("famix".to_string(), meta.to_string())].into_iter().collect();
        famix::io::archive::save_safetensors(&p, &tensors, Some(md)).unwrap();
        let (code, _, err) = run_famix(&[
            "predict",
            "--checkpoint",
            p.to_str().unwrap(),
            "--out",
            d.path().join("o").to_str().unwrap(),
            "--device",
            "cpu",
            fixture("img_a.png").to_str().unwrap(),
        ]);
        no_panic(&err);
        assert_ne!(code, 0, "{field}={value}");
        assert!(err.contains("crafted.safetensors"), "{field}: {err}");
    }
}

#[test]
fn resume_refuses_a_run_folder_whose_parts_disagree() {
    let d = tmpdir();
    let bank = reference_bank(d.path());
    let run = d.path().join("run");
    let args = train_args(&run, &bank, &["--stop-after", "1"]);
    let (code, _, err) = run_args(&args);
    assert_eq!(code, 0, "{err}");
    let cfg_path = run.join("config.json");
    let original = std::fs::read_to_string(&cfg_path).unwrap();
    let resume = || run_famix(&["train", "--resume", run.to_str().unwrap(), "--device", "cpu"]);
    // config.json of another run.
    let mut cfg: serde_json::Value = serde_json::from_str(&original).unwrap();
    cfg["run_id"] = "0123456789abcdef".into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let (code, _, err) = resume();
    assert_ne!(code, 0);
    assert!(err.contains("belongs to run"), "{err}");
    // config.json contradicting the checkpoint (7 classes vs 19).
    let mut cfg: serde_json::Value = serde_json::from_str(&original).unwrap();
    cfg["head"]["num_classes"] = 7.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let (code, _, err) = resume();
    assert_ne!(code, 0);
    assert!(err.contains("contradicts"), "{err}");
    // Restored, the run continues.
    std::fs::write(&cfg_path, &original).unwrap();
    let (code, _, err) = resume();
    assert_eq!(code, 0, "{err}");
}

#[test]
fn file_names_that_are_not_utf8_are_handled() {
    use std::os::unix::ffi::OsStrExt;
    let d = tmpdir();
    let ckpt = tiny_checkpoint(d.path());
    let inp = d.path().join("in");
    let name = std::ffi::OsStr::from_bytes(b"caf\xe9.png");
    Image8::new(64, 48, 3, 10).save_png(&inp.join(name)).unwrap();
    let out = d.path().join("out");
    let (code, _, err) =
        run_famix(&["predict", "--checkpoint", &ckpt, "--out", out.to_str().unwrap(), "--device", "cpu", inp.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.join(std::ffi::OsStr::from_bytes(b"caf\xe9_trainid.png")).exists(), "{err}");
}

#[test]
fn a_diverging_pin_stops_mining_with_a_message() {
    let d = tmpdir();
    let out = d.path().join("m.safetensors");
    let (code, _, err) = run_args(&common::mine_args(&out, &["--batch", "2", "--iters", "5", "--limit", "1", "--lr", "1e30"]));
    no_panic(&err);
    assert_ne!(code, 0);
    assert!(err.contains("PIN diverged") && err.contains("--lr"), "{err}");
    assert!(!out.exists(), "a diverged bank was written");
}

/// A checkpoint (.pth) or style bank (.pkl) whose pickle has a self-referencing
/// persistent id is refused with a message (it used to overflow the stack, exit 134).
#[test]
fn self_referencing_pickles_are_refused_not_crashed_on() {
    let d = tmpdir();
    let pth = d.path().join("cyclic.pth");
    std::fs::write(&pth, cyclic_persistent_id_zip()).unwrap();
    let pkl = d.path().join("cyclic.pkl");
    std::fs::write(&pkl, cyclic_persistent_id_pickle()).unwrap();
    let img = d.path().join("x.png");
    Image8::new(64, 48, 3, 90).save_png(&img).unwrap();
    let out = d.path().join("out").display().to_string();
    let bank = d.path().join("bank.safetensors").display().to_string();
    for args in [
        vec!["predict", "--checkpoint", pth.to_str().unwrap(), "--out", &out, "--device", "cpu", img.to_str().unwrap()],
        vec!["encode-image", "--clip", pth.to_str().unwrap(), img.to_str().unwrap()],
        vec!["styles", "import", pkl.to_str().unwrap(), "--out", &bank],
    ] {
        let (code, _, err) = run_famix(&args);
        no_panic(&err);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains("cycle") && err.contains("persistent id"), "{args:?}: {err}");
    }
}

/// A run folder whose latest checkpoint vanished after two finished iterations:
/// `--resume` refuses, naming the file and the way out; `--from-best` continues from
/// `best` and its log says so; `--resume --force` starts over; a folder killed before
/// its first checkpoint was committed still resumes from iteration 0.
#[test]
fn resume_never_restarts_a_run_with_history_silently() {
    let d = tmpdir();
    let bank = reference_bank(d.path());
    let run = d.path().join("run");
    let val = fixture("cityscapes_mini").display().to_string();
    let val_args = ["--iters", "2", "--val-dataset", "cityscapes", "--val-root", &val, "--val-interval", "1", "--val-limit", "1"];
    let (code, _, err) = run_args(&train_args(&run, &bank, &val_args));
    assert_eq!(code, 0, "{err}");
    let resume = |extra: &[&str]| {
        let mut a = vec!["train", "--resume", run.to_str().unwrap(), "--device", "cpu", "--iters", "3"];
        a.extend_from_slice(extra);
        run_famix(&a)
    };
    std::fs::remove_file(run.join("latest.safetensors")).unwrap();
    let (code, _, err) = resume(&[]);
    no_panic(&err);
    assert_ne!(code, 0, "resumed without its latest checkpoint: {err}");
    assert!(err.contains("latest.safetensors is missing") && err.contains("--from-best") && err.contains("--force"), "{err}");
    let log = std::fs::read_to_string(run.join("train_log.jsonl")).unwrap();
    assert!(log.contains("\"iter\":2"), "the refused resume kept the log: {log}");
    let best_step = serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(run.join("best.json")).unwrap()).unwrap()["step"]
        .as_u64()
        .unwrap();
    let (code, out, err) = resume(&["--from-best"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"steps\":3"), "{out}");
    let log = std::fs::read_to_string(run.join("train_log.jsonl")).unwrap();
    let note: Vec<&str> = log.lines().filter(|l| l.contains("\"note\"")).collect();
    assert_eq!(note.len(), 1, "{log}");
    assert!(note[0].contains("(from-best)") && note[0].contains(&format!("\"iter\":{best_step}")), "{}", note[0]);
    // Start over: iteration 0 with the saved settings; the log is rewritten.
    let (code, out, err) = resume(&["--force"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"steps\":3"), "{out}");
    assert!(!std::fs::read_to_string(run.join("train_log.jsonl")).unwrap().contains("\"note\""));
    // A folder killed while writing its first checkpoint (iteration 1 here): its
    // configuration and the log's first line, no committed checkpoint.
    let fresh = d.path().join("fresh");
    std::fs::create_dir_all(&fresh).unwrap();
    std::fs::copy(run.join("config.json"), fresh.join("config.json")).unwrap();
    std::fs::write(fresh.join("train_log.jsonl"), "{\"iter\":1,\"loss\":2.5}\n").unwrap();
    let (code, out, err) = run_famix(&["train", "--resume", fresh.to_str().unwrap(), "--device", "cpu", "--iters", "1"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("starting the run from iteration 0") && out.contains("\"steps\":1"), "{err}{out}");
}
