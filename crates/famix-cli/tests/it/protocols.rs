//! Evaluation conventions of DG papers and benchmark servers: the confusion matrix in
//! `eval --json`, Synthia's 16/13-class mIoU (checked against a hand computation from
//! that matrix, tolerance 1e-12), and Cityscapes label-id outputs from `predict`.
use crate::common;

use common::*;

/// IoU of class c from a row-major matrix, None when absent from both sides.
fn iou(m: &[Vec<u64>], c: usize) -> Option<f64> {
    let tp = m[c][c] as f64;
    let row: u64 = m[c].iter().sum();
    let col: u64 = m.iter().map(|r| r[c]).sum();
    let denom = row as f64 + col as f64 - tp;
    (denom > 0.0).then(|| tp / denom)
}

fn mean_present(m: &[Vec<u64>], classes: &[usize]) -> f64 {
    let v: Vec<f64> = classes.iter().filter_map(|&c| iou(m, c)).collect();
    v.iter().sum::<f64>() / v.len() as f64
}

#[test]
fn eval_reports_the_confusion_matrix_and_synthia_class_subsets() {
    let d = tmpdir();
    tch::manual_seed(11);
    let ckpt = famix::model::checkpoint::save_random_tiny(&d.path().join("tiny"), 19).unwrap();
    for (classes, key, subset) in [
        ("16", "miou16", vec![0usize, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18]),
        ("13", "miou13", vec![0usize, 1, 2, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18]),
    ] {
        let json = d.path().join(format!("{key}.json"));
        let (code, out, err) = eval_cityscapes_mini(&ckpt, &["--protocol", classes, "--json", json.to_str().unwrap()]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains(key), "{out}");
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        let m: Vec<Vec<u64>> = v["confusion_matrix"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect())
            .collect();
        assert_eq!((m.len(), m[0].len()), (19, 19));
        assert_eq!(v["class_names"].as_array().unwrap().len(), 19);
        assert_eq!(v["class_names"][13], "car");
        assert!(m.iter().flatten().sum::<u64>() > 0);
        let all: Vec<usize> = (0..19).collect();
        assert!((v["miou"].as_f64().unwrap() - mean_present(&m, &all)).abs() <= 1e-12, "miou disagrees with the matrix");
        let got = v[key].as_f64().unwrap();
        assert!((got - mean_present(&m, &subset)).abs() <= 1e-12, "{key} {got} != hand computation {}", mean_present(&m, &subset));
    }
    // Subsets are defined on the 19 Cityscapes classes: a 5-class model is refused.
    let (code, _, err) = eval_cityscapes_mini(&fixture("seg_a_ref.pth"), &["--protocol", "16"]);
    assert_ne!(code, 0);
    assert!(err.contains("protocol: 16"), "{err}");
    let (code, _, err) = run_famix(&["eval", "--checkpoint", "x", "--dataset", "cityscapes", "--data-root", "y", "--protocol", "17"]);
    assert_ne!(code, 0);
    assert!(err.contains("19, 16 or 13"), "{err}");
}

#[test]
fn predict_writes_cityscapes_label_ids_for_benchmark_servers() {
    let d = tmpdir();
    let ckpt = fixture("seg_a_ref.pth");
    let img = fixture("img_a.png");
    let run = |fmt: &str, out: &std::path::Path| {
        let (code, _, err) = predict_cpu(&ckpt, out, &img, &["--label-format", fmt]);
        assert_eq!(code, 0, "{err}");
    };
    let (a, b) = (d.path().join("train"), d.path().join("label"));
    run("trainid", &a);
    run("labelid", &b);
    assert!(!b.join("img_a_trainid.png").exists());
    let train = famix::data::datasets::read_label_ids(&a.join("img_a_trainid.png"), false).unwrap();
    let label = famix::data::datasets::read_label_ids(&b.join("img_a_labelIds.png"), false).unwrap();
    let table = [7u8, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33];
    assert_eq!(label.data, train.data.iter().map(|&t| table[t as usize]).collect::<Vec<_>>());
    // Converting back with the Cityscapes table gives the train ids again.
    let back = famix::data::DatasetKind::Cityscapes.label_map();
    assert_eq!(label.data.iter().map(|&l| back[l as usize]).collect::<Vec<_>>(), train.data);
}

/// Copies the Cityscapes fixture into an ACDC layout: condition `night` gets all three
/// images, `rain` the first two (so the columns differ).
fn acdc_from_cityscapes(root: &std::path::Path) {
    let cs = fixture("cityscapes_mini");
    for (cond, take) in [("night", 3), ("rain", 2)] {
        let mut imgs: Vec<_> = walk(&cs.join("leftImg8bit/val"));
        imgs.sort();
        for img in imgs.into_iter().take(take) {
            let name = img.file_name().unwrap().to_str().unwrap().replace("_leftImg8bit.png", "");
            let lbl = img.to_str().unwrap().replace("leftImg8bit", "gtFine").replace("gtFine.png", "gtFine_labelIds.png");
            let (di, dl) = (root.join("rgb_anon").join(cond).join("val/seq"), root.join("gt").join(cond).join("val/seq"));
            std::fs::create_dir_all(&di).unwrap();
            std::fs::create_dir_all(&dl).unwrap();
            std::fs::copy(&img, di.join(format!("{name}_rgb_anon.png"))).unwrap();
            std::fs::copy(&lbl, dl.join(format!("{name}_gt_labelIds.png"))).unwrap();
        }
    }
}

/// `eval` with several checkpoints and targets prints one table; every cell equals the
/// single evaluation of that checkpoint on that target (exactly: same computation), the
/// mean column and the mean ± std row match a hand computation (1e-12), and
/// `--markdown` writes the same table as Markdown.
#[test]
fn eval_makes_paper_style_tables() {
    let d = tmpdir();
    let ckpts: Vec<String> = (0..2)
        .map(|i| {
            tch::manual_seed(100 + i);
            famix::model::checkpoint::save_random_tiny(&d.path().join(format!("seed{i}")), 19).unwrap().display().to_string()
        })
        .collect();
    let acdc = d.path().join("acdc");
    acdc_from_cityscapes(&acdc);
    let cs = fixture("cityscapes_mini").display().to_string();
    let (json, md) = (d.path().join("table.json"), d.path().join("table.md"));
    let (c, n, r) = (format!("cityscapes={cs}"), format!("acdc-night={}", acdc.display()), format!("acdc:rain={}", acdc.display()));
    let mut args = vec!["eval", "--device", "cpu", "--json", json.to_str().unwrap(), "--markdown", md.to_str().unwrap()];
    for a in [&c, &n, &r] {
        args.extend(["--dataset", a.as_str()]);
    }
    for ck in &ckpts {
        args.extend(["--checkpoint", ck.as_str()]);
    }
    let (code, out, err) = run_famix(&args);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("mean ± std"), "{out}");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["columns"], serde_json::json!(["C", "night", "rain"]));
    let mut rows = vec![];
    for (i, ck) in ckpts.iter().enumerate() {
        let mut row = vec![];
        for (col, kind, root, cond) in [
            ("C", "cityscapes", cs.clone(), None),
            ("night", "acdc", acdc.display().to_string(), Some("night")),
            ("rain", "acdc", acdc.display().to_string(), Some("rain")),
        ] {
            let one = d.path().join("one.json");
            let mut a = vec![
                "eval",
                "--device",
                "cpu",
                "--checkpoint",
                ck,
                "--dataset",
                kind,
                "--data-root",
                &root,
                "--json",
                one.to_str().unwrap(),
            ];
            if let Some(c) = cond {
                a.extend(["--condition", c]);
            }
            let (code, _, err) = run_famix(&a);
            assert_eq!(code, 0, "{err}");
            let single: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&one).unwrap()).unwrap();
            assert_eq!(v["rows"][i]["miou"][col], single["miou"], "{ck} on {col}");
            row.push(single["miou"].as_f64().unwrap());
        }
        let mean = row.iter().sum::<f64>() / 3.0;
        assert!((v["rows"][i]["mean"].as_f64().unwrap() - mean).abs() <= 1e-12);
        rows.push(row);
    }
    let (a, b) = (rows[0][0], rows[1][0]);
    let (m, s) = ((a + b) / 2.0, ((a - b) * (a - b) / 2.0).sqrt());
    assert!((v["mean"]["C"].as_f64().unwrap() - m).abs() <= 1e-12 && (v["std"]["C"].as_f64().unwrap() - s).abs() <= 1e-12);
    let md = std::fs::read_to_string(&md).unwrap();
    assert!(md.starts_with("| checkpoint | C | night | rain | mean |"), "{md}");
    assert!(md.contains(&format!("| mean ± std | {:.2} ± {:.2} |", m * 100.0, s * 100.0)), "{md}");
    // A target without a root is refused by flag name.
    let (code, _, err) = run_famix(&["eval", "--checkpoint", &ckpts[0], "--dataset", "cityscapes", "--dataset", "bdd100k=/x"]);
    assert_ne!(code, 0);
    assert!(err.contains("needs a root"), "{err}");
    let (code, _, err) = run_famix(&["eval", "--checkpoint", &ckpts[0], "--dataset", "acdc-dusk=/x"]);
    assert_ne!(code, 0);
    assert!(err.contains("not one of night"), "{err}");
}
