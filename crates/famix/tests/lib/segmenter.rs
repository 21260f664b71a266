//! Segmenter parity with the PyTorch twin (logits at OS8/16/32, test-time scale and
//! ensemble, one synthetic-policy training step: gradients, BN statistics, SGD
//! update; tolerance 1e-4), freeze policy, famix checkpoints, reference .pth import,
//! and the predict / import-checkpoint commands.
use crate::common;

use common::*;
use famix::clip::OutputStride;
use famix::imageops::Image8;
use famix::model::checkpoint;
use famix::model::FreezePolicy;
use famix::optim::Sgd;
use tch::{Device, Kind, Tensor};

const TOL: f64 = 1e-4;

fn reference_model() -> checkpoint::Loaded {
    checkpoint::load(&fixture("seg_a_ref.pth"), Device::Cpu, None).unwrap()
}

#[test]
fn reference_pth_imports_with_inferred_architecture() {
    let l = reference_model();
    assert!(l.imported);
    let c = &l.model.config();
    assert_eq!(c.backbone.layers, [1, 1, 3, 3]);
    assert_eq!(c.backbone.width, 4);
    assert_eq!((c.head.num_classes, c.head.aspp_channels, c.head.low_proj_channels), (5, 16, 8));
    assert_eq!(c.output_stride, OutputStride::Os16);
    assert_eq!(l.meta.step, 750);
    assert!((l.meta.best_miou.unwrap() - 0.4242).abs() < 1e-12, "numpy.float64 best_score is read");
    assert_eq!(c.class_names()[..2], ["road".to_string(), "sidewalk".to_string()]);
}

#[test]
fn logits_match_pytorch_at_every_output_stride() {
    let exp = load("expected_seg.safetensors");
    let mut m = reference_model().model;
    for os in [8, 16, 32] {
        m.set_output_stride(OutputStride::from_int(os).unwrap());
        let y = tch::no_grad(|| m.forward(&exp["x"], false, None));
        assert_close(&format!("logits OS{os}"), &y, &exp[&format!("logits_os{os}")], TOL);
    }
}

#[test]
fn test_scale_and_ensemble_match_pytorch_and_labels_match() {
    let exp = load("expected_seg.safetensors");
    let m = reference_model().model;
    let img = Image8::open_rgb(&fixture("img_a.png")).unwrap();
    let x = famix::clip::preprocess::normalize_u8(&img.to_tensor_u8().unsqueeze(0), Device::Cpu);
    assert_close("scale 0.5", &m.predict_logits(&x, 0.5, false), &exp["img_a_logits_s05"], TOL);
    assert_close("ensemble", &m.predict_logits(&x, 0.5, true), &exp["img_a_logits_ens"], TOL);
    let pred = m.predict_logits(&x, 1.0, false).argmax(1, false).to_kind(Kind::Uint8);
    let want = Image8::from_tensor_u8(&Image8::open_rgb(&fixture("seg_a_pred_img_a.png")).unwrap().to_tensor_u8().get(0)).unwrap();
    assert_eq!(Image8::from_tensor_u8(&pred.get(0)).unwrap(), want, "predicted labels differ from PyTorch");
}

#[test]
fn synthetic_training_step_matches_pytorch() {
    let exp = load("expected_seg.safetensors");
    let mut m = reference_model().model;
    m.set_dropout(0.0).unwrap();
    m.set_freeze(FreezePolicy::Synthetic);
    let frozen_before: Vec<(String, Tensor)> =
        m.vs.variables()
            .into_iter()
            .filter(|(n, _)| n.starts_with("backbone.") && !n.starts_with("backbone.layer4.2."))
            .map(|(n, t)| (n, t.copy()))
            .collect();
    let famix::model::ParamGroups { backbone: bb, head } = m.param_groups();
    let names: Vec<&str> = bb.iter().chain(&head).map(|(n, _)| n.as_str()).collect();
    let mut want: Vec<String> = exp.keys().filter_map(|k| k.strip_prefix("grad.").map(str::to_string)).collect();
    want.sort();
    let mut got: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    got.sort();
    assert_eq!(got, want, "trainable parameter sets differ");
    assert!(bb.iter().all(|(n, _)| n.starts_with("backbone.layer4.2.")));

    let y = m.forward(&exp["x"], true, None);
    let loss = y.cross_entropy_loss::<Tensor>(&exp["y"], None, tch::Reduction::Mean, 255, 0.1);
    assert_close("loss", &loss.reshape([1]), &exp["train_loss"], TOL);
    loss.backward();
    for (n, p) in bb.iter().chain(&head) {
        assert_close(&format!("grad {n}"), &p.grad(), &exp[&format!("grad.{n}")], TOL);
    }
    let mut sgd = Sgd::new(0.9, 1e-4);
    sgd.step(&[(0.01, &bb), (0.1, &head)]);
    for (n, p) in bb.iter().chain(&head) {
        assert_close(&format!("after {n}"), p, &exp[&format!("after.{n}")], TOL);
    }
    for (n, t) in m.vs.variables() {
        if let Some(e) = exp.get(&format!("buffer.{n}")) {
            assert_close(&format!("BN statistic {n}"), &t, e, TOL);
        }
    }
    // Frozen parameters got no gradient and frozen BN statistics did not move.
    let vars = m.vs.variables();
    for (n, before) in &frozen_before {
        assert!(!vars[n].grad().defined(), "{n} got a gradient");
        assert_eq!(max_abs_diff(&vars[n], before), 0.0, "{n} changed while frozen");
    }
}

#[test]
fn freeze_policies_select_parameters() {
    let mut m = reference_model().model;
    let count = |m: &famix::model::Segmenter| {
        let g = m.param_groups();
        (g.backbone.len(), g.head.len())
    };
    let (_, head) = count(&m);
    m.set_freeze(FreezePolicy::Layer4);
    let (b4, h4) = count(&m);
    assert_eq!(h4, head);
    // layer4 has 3 blocks (+ downsample in the first): all train.
    assert!(b4 > 3 * 6);
    m.set_freeze(FreezePolicy::Nothing);
    let (ball, _) = count(&m);
    assert!(ball > b4);
    // BN running statistics are never parameters.
    let famix::model::ParamGroups { backbone: b, head: h } = m.param_groups();
    assert!(b.iter().chain(&h).all(|(n, _)| !n.contains("running")));
}

#[test]
fn famix_checkpoint_round_trips_atomically() {
    let dir = tmpdir();
    let l = reference_model();
    let mut meta = l.meta.clone();
    meta.step = 1234;
    let p = checkpoint::save(&l.model, &meta, &dir.path().join("model")).unwrap();
    assert_eq!(p, dir.path().join("model.safetensors"));
    assert!(dir.path().join("model.json").exists());
    let names: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| !n.contains(".tmp")), "temp files left: {names:?}");
    for spec in ["model", "model.safetensors", "model.json"] {
        let back = checkpoint::load(&dir.path().join(spec), Device::Cpu, None).unwrap();
        assert!(!back.imported);
        assert_eq!(back.meta.step, 1234);
        assert_eq!(back.model.config(), l.model.config());
        let a = l.model.vs.variables();
        for (n, t) in back.model.vs.variables() {
            assert_eq!(max_abs_diff(&t, &a[&n]), 0.0, "{n}");
        }
    }
    // A CLIP file given as a checkpoint is a clear error.
    let err = checkpoint::load(&fixture("clip_b.safetensors"), Device::Cpu, None).err().unwrap();
    assert!(format!("{err:#}").contains("load it as a CLIP"), "{err:#}");
    let err = checkpoint::load(&dir.path().join("missing"), Device::Cpu, None).err().unwrap();
    assert!(format!("{err:#}").contains("not found"), "{err:#}");
}
