//! Sharded jobs: `--shard I/N` parts are disjoint and cover the job, and merging them
//! gives exactly the unsharded result (eval metrics, style banks byte for byte).
use crate::common;

use std::path::Path;

use common::*;

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// Eval over 2 shards + `--merge` equals the unsharded evaluation exactly (same
/// confusion matrix, same metrics bit for bit: both come from the same integer sum).
#[test]
fn eval_shards_merge_to_the_full_metrics() {
    let d = tmpdir();
    tch::manual_seed(5);
    let ckpt = famix::model::checkpoint::save_random_tiny(&d.path().join("tiny"), 19).unwrap().display().to_string();
    let cs = fixture("cityscapes_mini").display().to_string();
    let base = [
        "eval",
        "--checkpoint",
        ckpt.as_str(),
        "--dataset",
        "cityscapes",
        "--data-root",
        cs.as_str(),
        "--device",
        "cpu",
        "--classes",
        "16",
    ];
    let run = |extra: &[&str]| {
        let (code, _, err) = run_famix(&base.iter().copied().chain(extra.iter().copied()).collect::<Vec<_>>());
        assert_eq!(code, 0, "{err}");
    };
    let p = |n: &str| d.path().join(n).display().to_string();
    run(&["--json", &p("full.json")]);
    run(&["--json", &p("s0.json"), "--shard", "0/2"]);
    // Slurm array task 2 of `--array=1-2` is shard 1/2.
    let s1 = p("s1.json");
    let args: Vec<&str> = base.iter().copied().chain(["--json", &s1, "--shard", "auto"]).collect();
    let out = famix_command()
        .args(&args)
        .env("SLURM_ARRAY_TASK_ID", "2")
        .env("SLURM_ARRAY_TASK_MIN", "1")
        .env("SLURM_ARRAY_TASK_COUNT", "2")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (s0, s1) = (json(Path::new(&p("s0.json"))), json(Path::new(&p("s1.json"))));
    assert_eq!((s0["shard"].as_str(), s1["shard"].as_str()), (Some("0/2"), Some("1/2")));
    assert_eq!(s0["images"].as_u64().unwrap() + s1["images"].as_u64().unwrap(), 3);
    let (code, _, err) = run_famix(&["eval", "--merge", &p("s1.json"), &p("s0.json"), "--json", &p("merged.json")]);
    assert_eq!(code, 0, "{err}");
    let (full, merged) = (json(Path::new(&p("full.json"))), json(Path::new(&p("merged.json"))));
    for key in ["confusion_matrix", "miou", "miou16", "overall_acc", "mean_acc", "per_class_iou", "images", "class_names"] {
        assert_eq!(full[key], merged[key], "{key}");
    }
    // Missing or repeated parts, and parts of other evaluations, are refused.
    let (code, _, err) = run_famix(&["eval", "--merge", &p("s0.json")]);
    assert!(code != 0 && err.contains("missing shard(s) 1/2"), "{err}");
    let (code, _, err) = run_famix(&["eval", "--merge", &p("s0.json"), &p("s0.json")]);
    assert!(code != 0 && err.contains("given twice"), "{err}");
    let (code, _, err) = run_famix(&["eval", "--merge", &p("s0.json"), &p("full.json")]);
    assert!(code != 0 && err.contains("not a shard"), "{err}");
    let (code, _, err) = run_famix(&base.iter().copied().chain(["--shard", "2/2"]).collect::<Vec<_>>());
    assert!(code != 0 && err.contains("--shard"), "{err}");
}

/// `mine-styles` over 2 shards (with launch groups of 2, so shards take whole groups)
/// + `styles merge` writes the unsharded run's bank byte for byte.
#[test]
fn mining_shards_merge_to_the_full_bank() {
    let d = tmpdir();
    let bank = |n: &str| d.path().join(n);
    let run = |out: &Path, extra: &[&str]| {
        let x: Vec<&str> =
            ["--batch", "2", "--iters", "3", "--group", "2", "--limit", "3"].into_iter().chain(extra.iter().copied()).collect();
        let (code, _, err) = run_args(&mine_args(out, &x));
        assert_eq!(code, 0, "{err}");
    };
    run(&bank("full.safetensors"), &[]);
    run(&bank("p0.safetensors"), &["--shard", "0/2"]);
    run(&bank("p1.safetensors"), &["--shard", "1/2"]);
    let p0 = famix::style::bank::StyleBank::load(&bank("p0.safetensors")).unwrap();
    assert_eq!(p0.summary.batches_total, 2, "shard 0 takes group 0 (batches 0, 1); shard 1 the last batch");
    let merged = bank("merged.safetensors");
    let (code, _, err) = run_famix(&[
        "styles",
        "merge",
        bank("p1.safetensors").to_str().unwrap(),
        bank("p0.safetensors").to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        std::fs::read(bank("full.safetensors")).unwrap() == std::fs::read(&merged).unwrap(),
        "merged bank differs from the unsharded one"
    );
    assert_eq!(std::fs::read_to_string(bank("full.json")).unwrap(), std::fs::read_to_string(bank("merged.json")).unwrap());
    let (code, _, err) =
        run_famix(&["styles", "merge", bank("p0.safetensors").to_str().unwrap(), "--out", bank("x.safetensors").to_str().unwrap()]);
    assert!(code != 0 && err.contains("missing shard(s) 1/2"), "{err}");
    let (code, _, err) =
        run_famix(&["styles", "merge", bank("full.safetensors").to_str().unwrap(), "--out", bank("x.safetensors").to_str().unwrap()]);
    assert!(code != 0 && err.contains("not a shard"), "{err}");
}

/// `predict` shards write disjoint outputs whose union is the unsharded job's, with
/// the same bytes.
#[test]
fn predict_shards_are_disjoint_and_cover_the_job() {
    let d = tmpdir();
    tch::manual_seed(6);
    let ckpt = famix::model::checkpoint::save_random_tiny(&d.path().join("tiny"), 19).unwrap().display().to_string();
    let imgs = fixture("cityscapes_mini/leftImg8bit").display().to_string();
    let list = |dir: &Path| -> Vec<String> {
        let mut v: Vec<String> = walk(dir).into_iter().map(|p| p.strip_prefix(dir).unwrap().display().to_string()).collect();
        v.sort();
        v
    };
    let mut parts = Vec::new();
    for (name, shard) in [("full", None), ("a", Some("0/2")), ("b", Some("1/2"))] {
        let out = d.path().join(name);
        let mut args = vec!["predict", "--checkpoint", ckpt.as_str(), "--device", "cpu", "--out", out.to_str().unwrap(), imgs.as_str()];
        if let Some(s) = shard {
            args.extend(["--shard", s]);
        }
        let (code, _, err) = run_famix(&args);
        assert_eq!(code, 0, "{err}");
        parts.push(out);
    }
    let (full, a, b) = (list(&parts[0]), list(&parts[1]), list(&parts[2]));
    assert!(!a.is_empty() && !b.is_empty() && a.iter().all(|f| !b.contains(f)), "{a:?} {b:?}");
    let mut union: Vec<String> = a.iter().chain(&b).cloned().collect();
    union.sort();
    assert_eq!(union, full);
    for f in &a {
        assert_eq!(std::fs::read(parts[1].join(f)).unwrap(), std::fs::read(parts[0].join(f)).unwrap(), "{f}");
    }
}
