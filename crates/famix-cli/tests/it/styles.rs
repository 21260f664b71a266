//! Style mining parity (the whole `famix mine-styles` pipeline replayed in PyTorch:
//! data order, crops, dominant classes, prompts, PIN; μ/σ and loss trajectories
//! within 1e-4), grouped launches, further passes, exact resume, bank files, reference
//! import.
use crate::common;

use std::collections::BTreeMap;

use common::*;
use famix::style::bank::StyleBank;
use tch::Tensor;

const TOL: f64 = 1e-4;

/// Runs mine-styles on the mini GTA5 set; `extra` flags override the defaults.
fn mine(out: &std::path::Path, extra: &[&str]) -> (i32, String, String) {
    let mut v = vec!["--batch", "4", "--iters", "5", "--seed", "1"];
    v.extend_from_slice(extra);
    run_args(&common::mine_args(out, &v))
}

fn expected() -> (serde_json::Value, std::collections::HashMap<String, Tensor>) {
    let meta = serde_json::from_str(&std::fs::read_to_string(fixture("mining_expected.json")).unwrap()).unwrap();
    (meta, load("mining_expected.safetensors"))
}

fn check_bank(bank: &StyleBank) {
    let (meta, t) = expected();
    let names = famix::data::labels::default_class_names(19);
    let key = |c: u64| if c == 255 { "255".to_string() } else { names[c as usize].clone() };
    let mut want: BTreeMap<String, Vec<(Tensor, Tensor, String)>> = BTreeMap::new();
    for (bi, b) in meta["batches"].as_array().unwrap().iter().enumerate() {
        for (i, c) in b["classes"].as_array().unwrap().iter().enumerate() {
            want.entry(key(c.as_u64().unwrap())).or_default().push((
                t[&format!("batch{bi}.mu")].get(i as i64),
                t[&format!("batch{bi}.sigma")].get(i as i64),
                b["prompts"][i].as_str().unwrap().to_string(),
            ));
        }
        let losses: Vec<f64> = b["losses"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let got = bank.summary.batch_losses[bi];
        assert!((got - losses[losses.len() - 1]).abs() < TOL, "batch {bi} final loss {got} vs {}", losses[4]);
    }
    assert_eq!(bank.summary.counts.keys().cloned().collect::<Vec<_>>(), want.keys().cloned().collect::<Vec<_>>());
    for (c, rows) in &want {
        let class = bank.entries.iter().find(|(k, _)| &bank.key(**k) == c).map(|(_, v)| v).unwrap();
        assert_eq!(class.0.len(), rows.len(), "{c}");
        for (i, (mu, sigma, prompt)) in rows.iter().enumerate() {
            assert_close(&format!("{c} μ #{i}"), &Tensor::from_slice(&class.0[i]), mu, TOL);
            assert_close(&format!("{c} σ #{i}"), &Tensor::from_slice(&class.1[i]), sigma, TOL);
            assert_eq!(&bank.summary.origins[c][i].prompt, prompt);
        }
    }
}

#[test]
fn mine_styles_matches_pytorch_replay() {
    let d = tmpdir();
    let out = d.path().join("bank.safetensors");
    let (code, stdout, err) = mine(&out, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("total") && stdout.contains("road"), "{stdout}");
    let bank = StyleBank::load(&out).unwrap();
    assert_eq!(bank.channels, 16);
    assert_eq!((bank.summary.batches_done, bank.summary.batches_total), (2, 2));
    check_bank(&bank);

    // An existing bank is never overwritten silently.
    let (code, _, err) = mine(&out, &[]);
    assert_ne!(code, 0);
    assert!(err.contains("--resume") && err.contains("--force"), "{err}");
}

#[test]
fn loss_trajectories_match_pytorch_iteration_by_iteration() {
    use famix::data::augment::TrainAugment;
    use famix::data::loader::{BatchLoader, LoaderConfig};
    use famix::data::{Dataset, DatasetKind};
    use famix::style::prompts::PromptSet;
    use famix::style::{mining::Miner, PinConfig};
    let (meta, t) = expected();
    let clip = famix::clip::Clip::load(&fixture("clip_a.safetensors.gz"), tch::Device::Cpu, famix::clip::OutputStride::Os32).unwrap();
    let ds = std::sync::Arc::new(Dataset::open(DatasetKind::Gta5, &fixture("gta5_mini"), "all", None).unwrap());
    let cfg = LoaderConfig { batch: 4, augment: TrainAugment::crop_only(72), grid: 3, seed: 1, workers: 2, prefetch: 8, skip_bad: false };
    let batches: Vec<_> = BatchLoader::new(ds, cfg, 0, 2).unwrap().map(|b| b.unwrap()).collect();
    let prompts = PromptSet::default();
    let pin = PinConfig { iters: 5, ..Default::default() };
    let mut miner = Miner::new(&clip, &prompts, &pin).unwrap();
    // Both batches in one launch: each keeps its own trajectory.
    let mined = miner.mine_batches(1, None, 0, &batches).unwrap();
    for (bi, m) in mined.iter().enumerate() {
        let b = &meta["batches"][bi];
        let want: Vec<f64> = b["losses"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_eq!(m.result.losses.len(), want.len());
        for (it, (g, w)) in m.result.losses.iter().zip(&want).enumerate() {
            assert!((g - w).abs() < TOL, "batch {bi} iteration {it}: loss {g} vs PyTorch {w}");
        }
        let classes: Vec<u64> = m.selections.iter().map(|s| s.class as u64).collect();
        let want_classes: Vec<u64> = b["classes"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        assert_eq!(classes, want_classes, "batch {bi} selected classes");
        let patches: Vec<u64> = m.selections.iter().map(|s| s.patch as u64).collect();
        let want_patches: Vec<u64> = b["patches"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        assert_eq!(patches, want_patches, "batch {bi} patch order");
        assert_close(&format!("batch {bi} μ"), &m.result.mu, &t[&format!("batch{bi}.mu")], TOL);
        assert_close(&format!("batch {bi} σ"), &m.result.sigma, &t[&format!("batch{bi}.sigma")], TOL);
    }
}

#[test]
fn grouped_launch_gives_the_same_bank() {
    let d = tmpdir();
    let out = d.path().join("bank.safetensors");
    let (code, _, err) = mine(&out, &["--group", "2"]);
    assert_eq!(code, 0, "{err}");
    check_bank(&StyleBank::load(&out).unwrap());
}

#[test]
fn further_passes_draw_new_orders_and_crops() {
    let d = tmpdir();
    let one = d.path().join("one.safetensors");
    assert_eq!(mine(&one, &[]).0, 0);
    let two = d.path().join("two.safetensors");
    let (code, _, err) = mine(&two, &["--passes", "2"]);
    assert_eq!(code, 0, "{err}");
    let (a, b) = (StyleBank::load(&one).unwrap(), StyleBank::load(&two).unwrap());
    let n = a.summary.batches_done as usize;
    assert_eq!(b.summary.batches_done as usize, 2 * n, "two passes mine twice the batches");
    // The first pass is the one-pass run, exactly; the second is not a repeat of it.
    assert_eq!(b.summary.batch_losses[..n], a.summary.batch_losses[..], "first pass");
    assert_ne!(b.summary.batch_losses[n..], a.summary.batch_losses[..], "the second pass repeats the first");
    for (c, (mu, _)) in &a.entries {
        assert_eq!(&b.entries[c].0[..mu.len()], &mu[..], "{}: the first pass's styles", a.key(*c));
    }
    assert_eq!(b.summary.config["passes"], 2, "the bank records its passes");
    assert!(a.summary.config.get("passes").is_none(), "one pass (the reference) is not written");
    // Resuming with another number of passes is refused; none at all is a named error.
    let (code, _, err) = mine(&two, &["--passes", "3", "--resume"]);
    assert_ne!(code, 0);
    assert!(err.contains("other settings"), "{err}");
    let (code, _, err) = mine(&d.path().join("zero.safetensors"), &["--passes", "0"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--passes") && err.contains("at least 1"), "{err}");
    let (code, _, err) = mine(&d.path().join("none.safetensors"), &["--limit", "0"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--limit: 0 mines nothing"), "{err}");
    // A huge number is refused before any batch list is built.
    let (code, _, err) = mine(&d.path().join("huge.safetensors"), &["--passes", "100000000000"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--passes") && err.contains("more than the 10000000 batches"), "{err}");
}

/// A bank that holds no styles (the part of a shard that got no batch) is refused by
/// training as such, not as a bank of the wrong width.
#[test]
fn training_refuses_a_bank_without_styles() {
    let d = tmpdir();
    let part = d.path().join("part.safetensors");
    let (code, _, err) = mine(&part, &["--batch", "8", "--shard", "1/2"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(StyleBank::load(&part).unwrap().total(), 0, "one batch of 8: shard 1/2 gets none");
    let (code, _, err) = run_args(&common::train_args(&d.path().join("run"), &part, &["--iters", "2"]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("part.safetensors: the bank holds no styles"), "{err}");
}

#[test]
fn interrupted_mining_resumes_to_the_same_bank() {
    let d = tmpdir();
    // Reference: uninterrupted, 4 batches of 2.
    let full = d.path().join("full.safetensors");
    assert_eq!(mine(&full, &["--batch", "2"]).0, 0);
    // Stop after one batch (as a crash right after a save would), then resume.
    let part = d.path().join("part.safetensors");
    assert_eq!(mine(&part, &["--batch", "2", "--limit", "1", "--save-every", "1"]).0, 0);
    assert_eq!(StyleBank::load(&part).unwrap().summary.batches_done, 1);
    let (code, _, err) = mine(&part, &["--batch", "2", "--resume"]);
    assert_eq!(code, 0, "{err}");
    // A real kill mid-run, then resume.
    let killed = d.path().join("killed.safetensors");
    let mut args: Vec<String> = [
        "mine-styles",
        "--clip",
        fixture("clip_a.safetensors.gz").to_str().unwrap(),
        "--dataset",
        "gta5",
        "--data-root",
        fixture("gta5_mini").to_str().unwrap(),
        "--split",
        "all",
        "--batch",
        "2",
        "--crop",
        "72",
        "--iters",
        "5",
        "--device",
        "cpu",
        "--save-every",
        "1",
        "--out",
        killed.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut child = famix_command().args(&args).stderr(std::process::Stdio::null()).spawn().unwrap();
    let t0 = std::time::Instant::now();
    while !killed.exists() && t0.elapsed().as_secs() < 120 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().ok();
    child.wait().unwrap();
    args.push("--resume".into());
    let (code, _, err) = run_famix(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{err}");
    let a = StyleBank::load(&full).unwrap();
    for other in [&part, &killed] {
        let b = StyleBank::load(other).unwrap();
        assert_eq!(b.summary.batches_done, 4);
        assert_eq!(a.summary.counts, b.summary.counts);
        for (c, (mu, sigma)) in &a.entries {
            assert_eq!(&b.entries[c].0, mu, "{} μ differs after resume", a.key(*c));
            assert_eq!(&b.entries[c].1, sigma, "{} σ differs after resume", a.key(*c));
        }
    }
    // Resuming with other settings is refused.
    let (code, _, err) = mine(&part, &["--batch", "2", "--resume", "--iters", "7"]);
    assert_ne!(code, 0);
    assert!(err.contains("other settings"), "{err}");
}

#[test]
fn target_prompt_and_style_file_extensions() {
    let d = tmpdir();
    let out = d.path().join("night.safetensors");
    let (code, _, err) = mine(&out, &["--prompt", "driving at night", "--limit", "1"]);
    assert_eq!(code, 0, "{err}");
    let bank = StyleBank::load(&out).unwrap();
    for origins in bank.summary.origins.values() {
        for o in origins {
            assert!(o.prompt.starts_with("driving at night"), "{}", o.prompt);
        }
    }
    let styles = d.path().join("styles.json");
    std::fs::write(&styles, r#"["Oil Painting style"]"#).unwrap();
    let out = d.path().join("oil.safetensors");
    let (code, _, err) = mine(&out, &["--styles", styles.to_str().unwrap(), "--limit", "1"]);
    assert_eq!(code, 0, "{err}");
    let bank = StyleBank::load(&out).unwrap();
    let prompts: Vec<&str> = bank.summary.origins.values().flatten().map(|o| o.prompt.as_str()).collect();
    assert!(prompts.iter().all(|p| p.starts_with("Oil Painting style") || *p == "photo"), "{prompts:?}");
    // Crop sizes must fit the grid.
    let (code, _, err) = mine(&d.path().join("x.safetensors"), &["--crop", "70"]);
    assert_ne!(code, 0);
    assert!(err.contains("divisible"), "{err}");
}

#[test]
fn reference_saved_params_import_and_show() {
    let d = tmpdir();
    let out = d.path().join("ref.safetensors");
    let (code, stdout, err) =
        run_famix(&["styles", "import", fixture("saved_params.pkl").to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("traffic light"), "{stdout}");
    let bank = StyleBank::load(&out).unwrap();
    let t = load("mining_expected.safetensors");
    assert_eq!(bank.total(), 6);
    for (class, key) in [(0u8, "road"), (255, "255"), (6, "traffic light")] {
        let (mu, sigma) = &bank.entries[&class];
        for i in 0..2 {
            assert_close(key, &Tensor::from_slice(&mu[i]), &t[&format!("ref.{key}.mu")].get(i as i64), 0.0);
            assert_close(key, &Tensor::from_slice(&sigma[i]), &t[&format!("ref.{key}.sigma")].get(i as i64), 0.0);
        }
    }
    let (code, stdout, _) = run_famix(&["styles", "show", out.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(stdout.contains("road") && stdout.contains("total 6 styles, 16 channels"), "{stdout}");
    let (code, _, err) = run_famix(&["styles", "show", d.path().join("missing.safetensors").to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("not found"), "{err}");
}
