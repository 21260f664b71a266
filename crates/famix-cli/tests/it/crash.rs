//! Crash consistency: training and mining are killed (`abort`, as `kill -9` or a
//! power cut would) at every durable step of every file they write — before and
//! after each rename — then resumed; the result must be bit-identical to an
//! uninterrupted run (tolerance 0), logs must hold each iteration once, and a
//! second writer of the same folder is refused while the first runs.
use crate::common;

use std::path::Path;

use common::*;
use famix::style::bank::StyleBank;

fn train_args(run: &Path, bank: &Path) -> Vec<String> {
    let val = fixture("cityscapes_mini").display().to_string();
    let extra =
        ["--iters", "6", "--val-dataset", "cityscapes", "--val-root", &val, "--val-interval", "3", "--log-interval", "1", "--workers", "2"];
    common::train_args(run, bank, &extra)
}

fn tensors(p: &Path) -> std::collections::HashMap<String, tch::Tensor> {
    famix::io::archive::load_file(p).unwrap().into_map()
}

fn assert_same_tensors(a: &Path, b: &Path, what: &str) {
    let (ta, tb) = (tensors(a), tensors(b));
    assert_eq!(ta.len(), tb.len(), "{what}: tensor count");
    for (k, t) in &ta {
        assert_eq!(max_abs_diff(t, &tb[k]), 0.0, "{what}: {k} differs");
    }
}

/// Iterations logged, in file order (loss lines).
fn logged_iters(run: &Path) -> Vec<u64> {
    std::fs::read_to_string(run.join("train_log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("loss").is_some())
        .map(|v| v["iter"].as_u64().unwrap())
        .collect()
}

#[test]
fn training_killed_at_every_commit_point_resumes_bit_exactly() {
    let d = tmpdir();
    let bank = reference_bank(d.path());
    let straight = d.path().join("straight");
    assert!(famix_crashing(&train_args(&straight, &bank), None));
    let want_log = logged_iters(&straight);
    assert_eq!(want_log, (1..=6).collect::<Vec<_>>());

    let mut crashed = 0;
    for at in 1.. {
        let run = d.path().join(format!("crash{at}"));
        let args = train_args(&run, &bank);
        if famix_crashing(&args, Some(at)) {
            break; // fewer durable steps than `at`: every point has been tried
        }
        crashed += 1;
        // Continue as a job scheduler would: --resume whenever the run folder has its
        // configuration (also before the first checkpoint), else start again.
        let resumed = if run.join("config.json").exists() {
            let r = ["train", "--resume", run.to_str().unwrap(), "--device", "cpu", "--workers", "2"];
            famix_crashing(&r.iter().map(|s| s.to_string()).collect::<Vec<_>>(), None)
        } else {
            famix_crashing(&args, None)
        };
        assert!(resumed, "crash point {at}: the run could not be continued");
        assert_same_tensors(&straight.join("latest.safetensors"), &run.join("latest.safetensors"), &format!("crash point {at}, latest"));
        assert_same_tensors(&straight.join("best.safetensors"), &run.join("best.safetensors"), &format!("crash point {at}, best"));
        assert_eq!(logged_iters(&run), want_log, "crash point {at}: log lines");
        let stray: Vec<_> =
            std::fs::read_dir(&run).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().contains(".tmp-")).collect();
        assert!(stray.is_empty(), "crash point {at}: temp files left: {stray:?}");
    }
    // Two points per file write: config.json, latest + sidecar at both checkpoints,
    // best + sidecar at least once.
    assert!(crashed >= 2 + 2 * 4 + 4, "only {crashed} crash points were exercised");
}

fn mine_args(out: &Path, extra: &[&str]) -> Vec<String> {
    let mut v = vec!["--batch", "2", "--iters", "3", "--save-every", "1", "--limit", "3"];
    v.extend_from_slice(extra);
    common::mine_args(out, &v)
}

#[test]
fn mining_killed_at_every_commit_point_resumes_to_the_same_bank() {
    let d = tmpdir();
    let full = d.path().join("full.safetensors");
    assert!(famix_crashing(&mine_args(&full, &[]), None));
    let want = StyleBank::load(&full).unwrap();
    let mut crashed = 0;
    for at in 1.. {
        let out = d.path().join(format!("crash{at}.safetensors"));
        if famix_crashing(&mine_args(&out, &[]), Some(at)) {
            break;
        }
        crashed += 1;
        assert!(famix_crashing(&mine_args(&out, &["--resume"]), None), "crash point {at}: cannot resume");
        let got = StyleBank::load(&out).unwrap();
        assert_eq!(got.summary.batches_done, want.summary.batches_done, "crash point {at}");
        assert_eq!(got.total(), want.total(), "crash point {at}: a batch was lost or duplicated");
        assert_eq!(got.entries, want.entries, "crash point {at}: styles differ");
        assert_eq!(got.summary.batch_losses, want.summary.batch_losses, "crash point {at}");
    }
    // 3 saves + the final one, bank + sidecar, two points each.
    assert!(crashed >= 8, "only {crashed} crash points were exercised");
}

#[test]
fn a_second_writer_is_refused_while_the_first_runs() {
    let d = tmpdir();
    let run = d.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let held = famix::io::FolderLock::acquire(&run, "test").unwrap();
    let bank = reference_bank(d.path());
    let (code, _, err) = run_args(&train_args(&run, &bank));
    assert_ne!(code, 0);
    assert!(err.contains("in use by another famix process"), "{err}");
    assert!(!run.join("config.json").exists(), "the refused writer touched the folder");
    // A lock held by this process on a bank refuses mining into it too.
    let out = d.path().join("b.safetensors");
    let _held_bank = famix::io::FolderLock::acquire(&out, "test").unwrap();
    let (code, _, err) = run_args(&mine_args(&out, &[]));
    assert_ne!(code, 0);
    assert!(err.contains("in use"), "{err}");
    drop(held);
    assert!(famix_crashing(&train_args(&run, &bank), None), "the lock is released with its holder");
}
