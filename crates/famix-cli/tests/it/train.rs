//! Local style mixing and one training iteration against the PyTorch twin (1e-4 after
//! the SGD step), exact resume (N straight = N/2 + resume + N/2, bit for bit on CPU),
//! run-folder contents and NaN handling.
use crate::common;

use common::*;
use famix::model::checkpoint;
use famix::model::FreezePolicy;
use famix::optim::Sgd;
use famix::style::mixing::{restyle, StyleMode};
use tch::{Device, Kind, Tensor};

const TOL: f64 = 1e-4;

#[test]
fn restyle_matches_pytorch_mix_and_no_mix() {
    let exp = load("expected_mixing.safetensors");
    let m = checkpoint::load(&fixture("seg_a_ref.pth"), Device::Cpu, None).unwrap().model;
    let f1 = tch::no_grad(|| m.backbone.forward_low(&exp["x"], false));
    let mixed = restyle(&f1, &exp["style_mu"], &exp["style_sigma"], Some(&exp["s"]), 3);
    assert_close("mixed features", &mixed, &exp["restyled_mix"], TOL);
    let plain = restyle(&f1, &exp["style_mu"], &exp["style_sigma"], None, 3);
    assert_close("unmixed features", &plain, &exp["restyled_nomix"], TOL);
}

#[test]
fn uneven_grids_restyle_each_cell_like_even_ones() {
    // On a map the grid divides, the per-cell path equals the vectorised one; on one it
    // does not, every cell is normalised to the style it was given.
    let f1 = Tensor::randn([2, 4, 12, 12], (Kind::Float, Device::Cpu)).abs();
    let mu = Tensor::randn([2, 9, 4], (Kind::Float, Device::Cpu));
    let sigma = Tensor::rand([2, 9, 4], (Kind::Float, Device::Cpu)) + 0.5;
    let s = Tensor::rand([2, 4, 1, 1], (Kind::Float, Device::Cpu));
    let even = restyle(&f1, &mu, &sigma, Some(&s), 3);
    let f1_13 = Tensor::cat(&[f1.shallow_clone(), f1.narrow(3, 0, 1)], 3);
    let uneven = restyle(&f1_13, &mu, &sigma, Some(&s), 3);
    assert_eq!(uneven.size(), vec![2, 4, 12, 13]);
    // Columns 0..8 belong to the same cells in both layouts.
    assert_close("first two cell columns", &uneven.narrow(3, 0, 8), &even.narrow(3, 0, 8), 1e-6);
    // Unmixed, a cell's output (before ReLU) has exactly the style's mean: check via a positive style.
    let plain = restyle(&f1_13, &(mu.abs() + 5.0), &(sigma * 0.1), None, 3);
    let cell = plain.narrow(2, 8, 4).narrow(3, 8, 5);
    let want = (mu.abs() + 5.0).select(1, 8);
    assert_close("last cell mean", &cell.mean_dim([2i64, 3].as_slice(), false, Kind::Float), &want, 1e-4);
}

/// One PyTorch-checked training iteration with style mixing (loss and every updated
/// weight within TOL); `fast` runs it on the training fast path (frozen stem and blocks
/// folded, channels-last input).
fn mixing_iteration_matches_pytorch(fast: bool) {
    let exp = load("expected_mixing.safetensors");
    let mut m = checkpoint::load(&fixture("seg_a_ref.pth"), Device::Cpu, None).unwrap().model;
    m.set_dropout(0.0).unwrap();
    m.set_freeze(FreezePolicy::Synthetic);
    if fast {
        m.fold_frozen();
    }
    let famix::model::ParamGroups { backbone: bb, head } = m.param_groups();
    let f = |x: &Tensor| restyle(x, &exp["style_mu"], &exp["style_sigma"], Some(&exp["s"]), 3);
    let logits = m.forward(&exp["x"], true, Some(&f));
    let loss = logits.cross_entropy_loss::<Tensor>(&exp["y"], None, tch::Reduction::Mean, 255, 0.1);
    assert_close("loss", &loss.reshape([1]), &exp["loss"], TOL);
    loss.backward();
    Sgd::new(0.9, 1e-4).step(&[(0.01, &bb), (0.1, &head)]);
    for (n, p) in bb.iter().chain(&head) {
        assert_close(&format!("after {n}"), p, &exp[&format!("after.{n}")], TOL);
    }
}

#[test]
fn training_iteration_with_mixing_matches_pytorch() {
    mixing_iteration_matches_pytorch(false);
}

/// The training fast path gives PyTorch's step too (same tolerance).
#[test]
fn training_step_on_the_fast_path_matches_pytorch() {
    mixing_iteration_matches_pytorch(true);
}

#[test]
fn style_draws_use_the_class_bank_or_fall_back() {
    use famix::style::bank::StyleBank;
    let mut bank = StyleBank::new(2, famix::data::classes::ClassSet::cityscapes());
    bank.push(0, vec![1.0, 1.0], vec![1.0, 1.0], None);
    bank.push(0, vec![2.0, 2.0], vec![2.0, 2.0], None);
    bank.push(255, vec![9.0, 9.0], vec![9.0, 9.0], None);
    let t = bank.device_tables(19, Device::Cpu).unwrap();
    assert_eq!(t.pick(0, 0.0), Some(0));
    assert_eq!(t.pick(0, 0.99), Some(1));
    assert_eq!(t.pick(5, 0.5), Some(2), "empty class → ignore-class style");
    assert_eq!(t.pick(255, 0.1), Some(2));
    let d = famix::style::mixing::draw(&t, &[vec![0, 5], vec![255, 0]], StyleMode::Mix, 0.1, 1, 7).unwrap();
    assert_eq!(d.s.as_ref().unwrap().size(), vec![2, 2, 1, 1]);
    let s = Vec::<f32>::try_from(d.s.unwrap().flatten(0, -1)).unwrap();
    assert!(s.iter().all(|v| (0.0..=1.0).contains(v)));
    let rows = Vec::<i64>::try_from(d.rows).unwrap();
    assert_eq!(rows[1], 2);
    assert_eq!(rows[2], 2);
    // Same (seed, step) → same draws; another step → other Beta samples.
    let a = famix::style::mixing::draw(&t, &[vec![0]], StyleMode::Mix, 0.1, 1, 3).unwrap();
    let b = famix::style::mixing::draw(&t, &[vec![0]], StyleMode::Mix, 0.1, 1, 3).unwrap();
    let c = famix::style::mixing::draw(&t, &[vec![0]], StyleMode::Mix, 0.1, 1, 4).unwrap();
    assert_eq!(max_abs_diff(a.s.as_ref().unwrap(), b.s.as_ref().unwrap()), 0.0);
    assert_ne!(max_abs_diff(a.s.as_ref().unwrap(), c.s.as_ref().unwrap()), 0.0);
    assert!(
        StyleBank::new(2, famix::data::classes::ClassSet::cityscapes()).device_tables(19, Device::Cpu).is_err(),
        "an empty bank is an error"
    );
}

/// The random-style control's targets (tolerances stated inline): per patch they
/// move away from the patch's own statistics by about the batch's spread of patch
/// statistics (mean |Δμ|/Σ_μ near E|N(0,1)| ≈ 0.80), they are none of a mined bank's
/// styles (the reference's, imported), σ stays positive, and they are a function of (seed, step).
#[test]
fn random_styles_differ_from_the_source_and_from_the_mined_bank() {
    use famix::style::mixing::{patch_stats, random_targets};
    let bank = famix::style::bank::StyleBank::import_reference(&fixture("saved_params.pkl")).unwrap();
    let c = bank.channels as i64;
    tch::manual_seed(3);
    let f1 = (Tensor::randn([4, c, 24, 24], (tch::Kind::Float, Device::Cpu)) * 0.7 + 0.4).relu();
    let (mu, sigma) = patch_stats(&f1, 3);
    assert_eq!(mu.size(), vec![4, 9, c]);
    let (mu_t, sigma_t) = random_targets(&f1, 3, 1, 0);
    let spread = mu.flatten(0, 1).std_dim([0i64].as_slice(), true, false);
    let moved = ((&mu_t - &mu).abs() / (&spread + 1e-12)).mean(tch::Kind::Double).double_value(&[]);
    assert!((0.7..=0.9).contains(&moved), "mean |Δμ| / Σ_μ = {moved} (expected ≈ 0.80)");
    assert!(max_abs_diff(&sigma_t, &sigma) > 1e-4, "σ was not redrawn");
    assert!(sigma_t.min().double_value(&[]) >= 1e-3, "σ must stay positive");
    // None of the reference's mined styles.
    let drawn = mu_t.flatten(0, 1);
    for (class, (mus, _)) in &bank.entries {
        for m in mus {
            let row = Tensor::from_slice(m).view([1, -1]);
            let nearest = (&drawn - &row).square().sum_dim_intlist([1i64].as_slice(), false, tch::Kind::Float).min().double_value(&[]);
            assert!(nearest > 1e-3, "a drawn μ equals a mined style of class {class}");
        }
    }
    let (again, _) = random_targets(&f1, 3, 1, 0);
    let (other, _) = random_targets(&f1, 3, 1, 1);
    assert_eq!(max_abs_diff(&mu_t, &again), 0.0, "same (seed, step), same draw");
    assert!(max_abs_diff(&mu_t, &other) > 0.0, "another step draws again");
}

fn train_args(run: &std::path::Path, bank: &std::path::Path, extra: &[&str]) -> Vec<String> {
    let mut v = vec!["--iters", "8", "--val-dataset", "cityscapes", "--val-root"];
    let val = fixture("cityscapes_mini").display().to_string();
    v.push(&val);
    v.extend(["--val-interval", "4", "--log-interval", "2", "--workers", "2"]);
    v.extend_from_slice(extra);
    common::train_args(run, bank, &v)
}

fn run(args: &[String]) -> (i32, String, String) {
    run_args(args)
}

#[test]
fn resume_is_exact_and_runs_are_complete() {
    let d = tmpdir();
    let bank = reference_bank(d.path());

    let straight = d.path().join("straight");
    let (code, out, err) = run(&train_args(&straight, &bank, &[]));
    assert_eq!(code, 0, "{err}");
    let summary: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(summary["steps"], 8);
    for f in ["config.json", "train_log.jsonl", "latest.safetensors", "latest.json", "best.safetensors", "best.json"] {
        assert!(straight.join(f).exists(), "{f} missing");
    }
    let log = std::fs::read_to_string(straight.join("train_log.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(lines.iter().any(|l| l["iter"] == 2 && l["loss"].as_f64().unwrap().is_finite() && l["lr_head"].as_f64().is_some()));
    assert_eq!(lines.iter().filter(|l| l.get("val_miou").is_some()).count(), 2);
    // The best validation's confusion matrix is kept beside `best`, consistent with it.
    let conf: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(straight.join("best_confusion.json")).unwrap()).unwrap();
    let best = checkpoint::load(&straight.join("best"), Device::Cpu, None).unwrap().meta;
    assert_eq!(conf["iter"].as_u64(), Some(best.step));
    assert_eq!(conf["miou"].as_f64(), best.best_miou);
    let m = conf["confusion_matrix"].as_array().unwrap();
    assert_eq!((m.len(), conf["class_names"].as_array().unwrap().len()), (19, 19));
    assert!(m.iter().flat_map(|r| r.as_array().unwrap()).map(|x| x.as_u64().unwrap()).sum::<u64>() > 0);

    let split = d.path().join("split");
    let (code, _, err) = run(&train_args(&split, &bank, &["--stop-after", "4"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(checkpoint::load(&split.join("latest"), Device::Cpu, None).unwrap().meta.step, 4);
    // An existing run is not overwritten by accident.
    let (code, _, err) = run(&train_args(&split, &bank, &[]));
    assert_ne!(code, 0);
    assert!(err.contains("--resume"), "{err}");
    // Settings that define the run cannot change on resume; nothing is touched.
    let before = std::fs::read(split.join("latest.safetensors")).unwrap();
    for extra in [&["--lr", "0.5"][..], &["--batch", "4", "--seed", "3"][..], &["--no-augment"][..]] {
        let mut args = vec!["train", "--resume", split.to_str().unwrap(), "--device", "cpu"];
        args.extend_from_slice(extra);
        let (code, _, err) = run_famix(&args);
        assert_ne!(code, 0, "{extra:?} was accepted with --resume");
        assert!(err.contains(extra[0]) && err.contains("--resume"), "{err}");
    }
    assert_eq!(std::fs::read(split.join("latest.safetensors")).unwrap(), before, "a refused resume changed the run");
    let (code, _, err) = run_famix(&["train", "--resume", split.to_str().unwrap(), "--device", "cpu", "--workers", "3"]);
    assert_eq!(code, 0, "{err}");

    let a = checkpoint::load(&straight.join("latest"), Device::Cpu, None).unwrap();
    let b = checkpoint::load(&split.join("latest"), Device::Cpu, None).unwrap();
    assert_eq!((a.meta.step, b.meta.step), (8, 8));
    let va = a.model.vs.variables();
    for (n, t) in b.model.vs.variables() {
        assert_eq!(max_abs_diff(&t, &va[&n]), 0.0, "{n} differs after resume");
    }
    // The optimiser state is inside the checkpoint (one file, one commit).
    assert_eq!(
        std::fs::read_dir(&straight).unwrap().filter(|e| e.as_ref().unwrap().path().to_string_lossy().ends_with(".safetensors")).count(),
        2
    );
    let optim = |p: &std::path::Path| -> std::collections::HashMap<String, tch::Tensor> {
        let m = famix::io::archive::load_file(&p.join("latest.safetensors")).unwrap().into_map();
        m.into_iter().filter(|(k, _)| k.starts_with("optim.momentum.")).collect()
    };
    let (oa, ob) = (optim(&straight), optim(&split));
    assert!(!oa.is_empty());
    assert_eq!(oa.len(), ob.len());
    for (n, t) in &oa {
        assert_eq!(max_abs_diff(t, &ob[n]), 0.0, "momentum {n} differs after resume");
    }
    // Frozen backbone parts are still the CLIP weights.
    let clip = famix::io::archive::load_file(&fixture("clip_a_state.pt.gz")).unwrap().into_map();
    assert_eq!(max_abs_diff(&va["backbone.layer2.0.conv1.weight"], &clip["visual.layer2.0.conv1.weight"]), 0.0);
    assert_ne!(max_abs_diff(&va["backbone.layer4.2.conv2.weight"], &clip["visual.layer4.2.conv2.weight"]), 0.0);
    // Checkpoints from a run work with eval and predict as they are.
    let (code, out, err) = eval_cityscapes_mini(&straight.join("best.safetensors"), &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("mIoU"));
    // Extending a finished run with --iters continues it.
    let (code, _, err) = run_famix(&["train", "--resume", straight.to_str().unwrap(), "--iters", "10", "--device", "cpu"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(checkpoint::load(&straight.join("latest"), Device::Cpu, None).unwrap().meta.step, 10);
}

#[test]
fn ablations_and_bad_settings() {
    let d = tmpdir();
    let bank = reference_bank(d.path());
    for flag in ["--no-mix", "--no-styles"] {
        let r = d.path().join(flag.trim_start_matches('-'));
        let (code, _, err) = run(&train_args(&r, &bank, &[flag, "--iters", "2", "--val-interval", "2"]));
        assert_eq!(code, 0, "{flag}: {err}");
        let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(r.join("config.json")).unwrap()).unwrap();
        assert_eq!(cfg["style_mode"], flag.trim_start_matches("--"));
    }
    // The random-style control needs no bank and refuses one.
    let mut args = train_args(&d.path().join("random"), &bank, &["--random-styles", "--iters", "2", "--val-interval", "2"]);
    let (code, _, err) = run(&args);
    assert_ne!(code, 0);
    assert!(err.contains("--random-styles") && err.contains("--styles"), "{err}");
    let at = args.iter().position(|a| a == "--styles").unwrap();
    args.drain(at..at + 2);
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "--random-styles: {err}");
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.path().join("random/config.json")).unwrap()).unwrap();
    assert_eq!(cfg["style_mode"], "random-mix");
    // A diverging run stops with a clear message and leaves no corrupt checkpoint.
    let r = d.path().join("nan");
    let (code, _, err) = run(&train_args(&r, &bank, &["--lr", "1e30", "--iters", "6", "--log-interval", "1", "--val-interval", "100"]));
    assert_ne!(code, 0);
    assert!(err.contains("loss became"), "{err}");
    assert!(!r.join("latest.safetensors").exists());
    // Batch 1 cannot train batch norm; crops must fit the grid.
    let (code, _, err) = run(&train_args(&d.path().join("b1"), &bank, &["--batch", "1"]));
    assert_ne!(code, 0);
    assert!(err.contains("at least 2"), "{err}");
    let (code, _, err) = run(&train_args(&d.path().join("c"), &bank, &["--crop", "50"]));
    assert_ne!(code, 0);
    assert!(err.contains("divisible by 4"), "{err}");
    // Style channels must match the backbone.
    let mut wrong = famix::style::bank::StyleBank::new(4, famix::data::classes::ClassSet::cityscapes());
    wrong.push(0, vec![0.0; 4], vec![1.0; 4], None);
    let wb = d.path().join("wrong.safetensors");
    wrong.save(&wb).unwrap();
    let (code, _, err) = run(&train_args(&d.path().join("w"), &wb, &[]));
    assert_ne!(code, 0);
    assert!(err.contains("channels"), "{err}");
}

#[test]
fn unreadable_training_samples_stop_the_run_or_are_skipped() {
    let d = tmpdir();
    let bank = reference_bank(d.path());
    // A copy of the mini GTA5 set with one truncated frame.
    let data = d.path().join("gta5");
    for sub in ["images", "labels"] {
        std::fs::create_dir_all(data.join(sub)).unwrap();
        for e in std::fs::read_dir(fixture("gta5_mini").join(sub)).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, data.join(sub).join(p.file_name().unwrap())).unwrap();
        }
    }
    let bad = data.join("images/00003.png");
    let bytes = std::fs::read(&bad).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() / 3]).unwrap();
    let args = |run: &str, extra: &[&str]| -> Vec<String> {
        let mut v = train_args(&d.path().join(run), &bank, &["--iters", "4", "--val-interval", "4", "--no-augment"]);
        let i = v.iter().position(|a| a == "--data-root").unwrap();
        v[i + 1] = data.to_str().unwrap().to_string();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let (code, _, err) = run(&args("strict", &[]));
    assert_ne!(code, 0);
    assert!(err.contains("00003.png") && err.contains("--skip-bad"), "{err}");
    let (code, _, err) = run(&args("lenient", &["--skip-bad"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(err.matches("skipping unreadable sample").count(), 1, "reported once: {err}");
    assert!(err.contains("00003.png"));
}

/// A checkpoint with its weights but without a fitting optimiser state is refused by
/// --resume (naming the problem and the flag), unless --reset-optimizer; a checkpoint
/// whose batch-norm statistics hold inf is refused by eval naming the tensor; a run
/// that diverges names the last checkpoint that is entirely finite; a run folder with
/// its configuration but no checkpoint resumes from iteration 0.
#[test]
fn incomplete_or_poisoned_checkpoints_and_early_resumes() {
    let d = tmpdir();
    let bank = reference_bank(d.path());
    let run_dir = d.path().join("run");
    let (code, _, err) = run(&train_args(&run_dir, &bank, &["--stop-after", "4"]));
    assert_eq!(code, 0, "{err}");
    let latest = run_dir.join("latest.safetensors");
    let original = std::fs::read(&latest).unwrap();
    let rewrite = |keep: &dyn Fn(&str) -> bool, poison: Option<&str>| {
        let f = famix::io::archive::load_file(&latest).unwrap();
        let meta = f.metadata.clone();
        let mut kept: Vec<(String, tch::Tensor)> = f.into_map().into_iter().filter(|(k, _)| keep(k)).collect();
        if let Some(p) = poison {
            let t = kept.iter_mut().find(|(k, _)| k == p).unwrap();
            t.1 = t.1.fill(f64::INFINITY);
        }
        kept.sort_by(|a, b| a.0.cmp(&b.0));
        famix::io::archive::save_safetensors(&latest, &kept, Some(meta)).unwrap();
    };
    let resume = |extra: &[&str]| {
        let mut a = vec!["train", "--resume", run_dir.to_str().unwrap(), "--device", "cpu", "--workers", "2"];
        a.extend_from_slice(extra);
        run_famix(&a)
    };
    // Missing momentum: refused, then accepted with --reset-optimizer.
    rewrite(&|k: &str| !k.starts_with("optim."), None);
    let (code, _, err) = resume(&["--stop-after", "1"]);
    assert_eq!(code, 1);
    assert!(err.contains("no optimiser momentum") && err.contains("--reset-optimizer"), "{err}");
    let (code, _, err) = resume(&["--stop-after", "1", "--reset-optimizer"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("fresh SGD momentum"), "{err}");
    // Mis-shaped momentum: refused with the tensor's name.
    std::fs::write(&latest, &original).unwrap();
    let f = famix::io::archive::load_file(&latest).unwrap();
    let meta = f.metadata.clone();
    let mut all: Vec<(String, tch::Tensor)> = f.into_map().into_iter().collect();
    let m = all.iter_mut().find(|(k, _)| k.starts_with("optim.momentum.")).unwrap();
    m.1 = tch::Tensor::zeros([3], (Kind::Float, Device::Cpu));
    let bad_name = m.0.clone();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    famix::io::archive::save_safetensors(&latest, &all, Some(meta)).unwrap();
    let (code, _, err) = resume(&["--stop-after", "1"]);
    assert_eq!(code, 1);
    assert!(err.contains(bad_name.trim_start_matches("optim.")) && err.contains("shape") && err.contains("--reset-optimizer"), "{err}");
    // inf in a batch-norm running variance: eval and resume refuse it by name.
    std::fs::write(&latest, &original).unwrap();
    rewrite(&|_: &str| true, Some("backbone.layer4.0.bn2.running_var"));
    let (code, _, err) = eval_cityscapes_mini(&latest, &[]);
    assert_eq!(code, 1);
    assert!(err.contains("backbone.layer4.0.bn2.running_var") && err.contains("non-finite"), "{err}");
    let (code, _, err) = resume(&[]);
    assert_eq!(code, 1);
    assert!(err.contains("running_var") && err.contains("non-finite"), "{err}");
    // A diverging run stops before writing non-finite values and names the last
    // checkpoint that is entirely finite (or says there is none).
    let div = d.path().join("div");
    let (code, _, err) = run(&train_args(&div, &bank, &["--lr", "1e6", "--iters", "8", "--log-interval", "1", "--val-interval", "2"]));
    assert_ne!(code, 0);
    assert!(err.contains("non-finite") || err.contains("loss became"), "{err}");
    assert!(err.contains("holds only finite values") || err.contains("No checkpoint was written yet"), "{err}");
    if div.join("latest.safetensors").exists() {
        let all: Vec<(String, tch::Tensor)> =
            famix::io::archive::load_file(&div.join("latest.safetensors")).unwrap().into_map().into_iter().collect();
        famix::io::weights::check_finite(&all).expect("a written checkpoint is entirely finite");
    }
    // Configuration but no checkpoint: --resume starts the run from iteration 0.
    let early = d.path().join("early");
    std::fs::create_dir_all(&early).unwrap();
    std::fs::copy(run_dir.join("config.json"), early.join("config.json")).unwrap();
    let (code, _, err) =
        run_famix(&["train", "--resume", early.to_str().unwrap(), "--device", "cpu", "--stop-after", "2", "--workers", "2"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("no committed checkpoint") && err.contains("iteration 0"), "{err}");
    assert_eq!(checkpoint::load(&early.join("latest"), Device::Cpu, None).unwrap().meta.step, 2);
}
