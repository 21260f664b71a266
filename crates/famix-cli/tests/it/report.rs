//! Run reports and TensorBoard: a short training run (stopped and resumed) read back
//! by TensorBoard's own event reader, and `famix report` rendered by headless Chromium.
use crate::common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;

/// Trains 8 iterations on the fixtures, stopping after 6 and resuming, with TensorBoard on.
fn train_run(run: &Path, bank: &Path) {
    let val = fixture("cityscapes_mini").display().to_string();
    let base = ["--iters", "8", "--val-dataset", "cityscapes", "--val-root", &val, "--val-interval", "4", "--log-interval", "2"];
    let first: Vec<&str> = base.iter().copied().chain(["--stop-after", "6", "--tensorboard"]).collect();
    let (code, _, err) = run_args(&train_args(run, bank, &first));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run_famix(&["train", "--resume", run.to_str().unwrap(), "--tensorboard"]);
    assert_eq!(code, 0, "{err}");
}

fn log_lines(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("train_log.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// TensorBoard's reader (the `tensorboard` package, pinned in tools/requirements-test.txt)
/// lists every scalar of the log, each step once across the stop and the resume, with
/// the log's values (to f32 precision: TensorBoard stores scalars as float32; tolerance
/// 1e-6 relative).
#[test]
fn tensorboard_reads_the_scalars_and_report_renders() {
    let d = tmpdir();
    let bank = reference_bank(d.path());
    let run = d.path().join("run");
    train_run(&run, &bank);

    let script = repo_root().join("tools/read_tensorboard.py");
    let out = std::process::Command::new(venv_python()).arg(script).arg(run.join("tensorboard")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tb: BTreeMap<String, Vec<(u64, f64)>> = serde_json::from_slice(&out.stdout).unwrap();
    let lines = log_lines(&run);
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * b.abs().max(1e-6);
    for (key, tag) in
        [("loss", "train/loss"), ("lr_head", "train/lr_head"), ("lr_backbone", "train/lr_backbone"), ("images_per_s", "train/images_per_s")]
    {
        let want: Vec<(u64, f64)> =
            lines.iter().filter(|l| l.get("loss").is_some()).map(|l| (l["iter"].as_u64().unwrap(), l[key].as_f64().unwrap())).collect();
        let got = tb.get(tag).unwrap_or_else(|| panic!("{tag} missing from {:?}", tb.keys()));
        assert_eq!(got.iter().map(|p| p.0).collect::<Vec<_>>(), vec![2, 4, 6, 8], "{tag}: each step once");
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert!(g.0 == w.0 && close(g.1, w.1), "{tag}: {g:?} vs log {w:?}");
        }
    }
    let val: Vec<(u64, f64)> = lines
        .iter()
        .filter(|l| l.get("val_miou").is_some())
        .map(|l| (l["iter"].as_u64().unwrap(), l["val_miou"].as_f64().unwrap()))
        .collect();
    assert_eq!(val.iter().map(|v| v.0).collect::<Vec<_>>(), vec![4, 6, 8]);
    let got = &tb["val/miou"];
    assert!(got.len() == val.len() && got.iter().zip(&val).all(|(g, w)| g.0 == w.0 && close(g.1, w.1)), "{got:?} vs {val:?}");
    let per_class: Vec<&String> = tb.keys().filter(|k| k.starts_with("val/iou/")).collect();
    assert!(!per_class.is_empty(), "no per-class IoU scalars");
    for k in per_class {
        let class = &k["val/iou/".len()..];
        for (step, v) in &tb[k] {
            let line = lines.iter().find(|l| l["iter"] == *step && l.get("val_miou").is_some()).unwrap();
            assert!(close(*v, line["per_class_iou"][class].as_f64().unwrap()), "{k} at {step}");
        }
    }

    report_renders_in_chromium(&run, d.path());
}

/// `famix report` writes every figure; Chromium loads the page and every image in it
/// (each <img> records its natural width on load), and the screenshot is not blank.
fn report_renders_in_chromium(run: &Path, tmp: &Path) {
    let out = tmp.join("report");
    let (code, stdout, err) =
        run_famix(&["report", run.to_str().unwrap(), "--out", out.to_str().unwrap(), "--samples", "2", "--device", "cpu"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(stdout.trim(), out.join("index.html").display().to_string());
    let figures = ["loss.png", "lr.png", "val_miou.png", "per_class_iou.png", "confusion.png", "samples.png"];
    for f in figures {
        let img = famix::Image8::open_rgb(&out.join(f)).unwrap_or_else(|e| panic!("{f}: {e:#}"));
        let first = &img.data[..3];
        assert!(img.data.chunks(3).any(|p| p != first), "{f} is blank");
    }
    let samples = famix::Image8::open_rgb(&out.join("samples.png")).unwrap();
    assert_eq!(samples.width, 4 * 320 + 3 * 4, "image | ground truth | prediction | overlay");

    let url = format!("file://{}", out.join("index.html").display());
    let dom = chromium_dump_dom(&url, &tmp.join("profile"));
    for f in figures {
        let tag = dom.split("<img").find(|t| t.contains(&format!("src=\"{f}\""))).unwrap_or_else(|| panic!("{f} not on the page"));
        assert!(tag.contains("data-loaded=\"") && !tag.contains("data-loaded=\"0\""), "{f} did not load in Chromium: {tag}");
    }
    assert!(dom.contains("Per-class IoU at iteration"));
    let shot = tmp.join("shot.png");
    chromium_screenshot(&url, &tmp.join("profile2"), &shot, 1200, 2400);
    let img = famix::Image8::open_rgb(&shot).unwrap();
    let mut colors = std::collections::HashSet::new();
    for p in img.data.chunks(3) {
        colors.insert([p[0], p[1], p[2]]);
    }
    assert!(colors.len() > 50, "the screenshot looks blank ({} colours)", colors.len());
}

/// A folder that is not a run is refused with its name; a run without validation still
/// gets its curves, with the missing parts noted.
#[test]
fn report_of_a_non_run_and_of_a_run_without_validation() {
    let d = tmpdir();
    let (code, _, err) = run_famix(&["report", d.path().to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("is not a famix run folder"), "{err}");

    let bank = reference_bank(d.path());
    let run = d.path().join("noval");
    let (code, _, err) = run_args(&train_args(&run, &bank, &["--iters", "2", "--log-interval", "1"]));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run_famix(&["report", run.to_str().unwrap(), "--device", "cpu"]);
    assert_eq!(code, 0, "{err}");
    assert!(run.join("report/loss.png").exists() && run.join("report/lr.png").exists());
    assert!(!run.join("report/confusion.png").exists());
    assert!(err.contains("note: no validation"), "{err}");
    let html = std::fs::read_to_string(run.join("report/index.html")).unwrap();
    assert!(html.contains("Note: no validation"));
}
