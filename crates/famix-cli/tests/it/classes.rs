//! Your own classes: a 6-class dataset with colour-coded labels, made here from the
//! mini GTA5 fixture, goes through `data check` (counts equal a direct count;
//! undeclared colours reported with their file, and refused by training in the same
//! words), mining (prompts carry the class words), training, eval, predict, serve,
//! export and `data browse`, all of which carry the six names and colours; a model
//! refuses another class file and a bank of another class set, naming the difference;
//! the built-in Cityscapes set written as a class file changes nothing, byte for byte.
use crate::common;

use std::path::{Path, PathBuf};

use common::*;
use famix::data::labels::cityscapes_map;
use famix::imageops::Image8;

const SIX: &str = r#"{
  "encoding": "rgb",
  "ignore": [[0, 0, 0]],
  "classes": [
    {"name": "flat", "prompt": "road and pavement", "color": [128, 64, 128]},
    {"name": "construction", "color": [70, 70, 70]},
    {"name": "object", "prompt": "pole and traffic sign", "color": [220, 220, 0]},
    {"name": "nature", "prompt": "vegetation", "color": [107, 142, 35]},
    {"name": "sky", "color": [70, 130, 180]},
    {"name": "movable", "prompt": "car or person", "color": [0, 0, 142]}
  ]
}"#;

const NAMES: [&str; 6] = ["flat", "construction", "object", "nature", "sky", "movable"];
const COLORS: [[u8; 3]; 6] = [[128, 64, 128], [70, 70, 70], [220, 220, 0], [107, 142, 35], [70, 130, 180], [0, 0, 142]];

/// The six-class group of a Cityscapes train id (None: ignore).
fn group(train_id: u8) -> Option<usize> {
    match train_id {
        0 | 1 => Some(0),
        2..=4 => Some(1),
        5..=7 => Some(2),
        8 | 9 => Some(3),
        10 => Some(4),
        11..=18 => Some(5),
        _ => None,
    }
}

/// A 6-class folder dataset (images/, labels/ as RGB PNGs) made from the mini GTA5
/// fixture, its class file, and the direct count of pixels and images per class.
struct SixClass {
    root: PathBuf,
    classes: PathBuf,
    pixels: [u64; 6],
    images: [u64; 6],
}

fn six_class(dir: &Path) -> SixClass {
    let root = dir.join("six");
    let (img_dir, lbl_dir) = (root.join("images"), root.join("labels"));
    std::fs::create_dir_all(&img_dir).unwrap();
    std::fs::create_dir_all(&lbl_dir).unwrap();
    let src = fixture("gta5_mini");
    let map = cityscapes_map();
    let (mut pixels, mut images) = ([0u64; 6], [0u64; 6]);
    for i in 1..=8 {
        let name = format!("{i:05}.png");
        std::fs::copy(src.join("images").join(&name), img_dir.join(&name)).unwrap();
        let raw = famix::data::datasets::read_label_ids(&src.join("labels").join(&name), false).unwrap();
        let mut seen = [false; 6];
        let mut rgb = Vec::with_capacity(raw.data.len() * 3);
        for &v in &raw.data {
            match group(map[v as usize]) {
                Some(g) => {
                    (pixels[g], seen[g]) = (pixels[g] + 1, true);
                    rgb.extend_from_slice(&COLORS[g]);
                }
                None => rgb.extend_from_slice(&[0, 0, 0]),
            }
        }
        for (n, s) in images.iter_mut().zip(seen) {
            *n += s as u64;
        }
        Image8 { width: raw.width, height: raw.height, channels: 3, data: rgb }.save_png(&lbl_dir.join(&name)).unwrap();
    }
    let classes = dir.join("six.json");
    std::fs::write(&classes, SIX).unwrap();
    SixClass { root, classes, pixels, images }
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn data_check(ds: &SixClass, classes: &Path, json: &Path) -> (i32, String, String) {
    run_famix(&[
        "data",
        "check",
        "--dataset",
        "folder",
        "--data-root",
        &s(&ds.root),
        "--split",
        "train",
        "--classes",
        &s(classes),
        "--json",
        &s(json),
    ])
}

#[test]
fn data_check_counts_six_colour_coded_classes_and_reports_undeclared_colours() {
    let d = tmpdir();
    let ds = six_class(d.path());
    let json = d.path().join("check.json");
    let (code, out, err) = data_check(&ds, &ds.classes, &json);
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let split = &v["splits"][0];
    for (i, name) in NAMES.iter().enumerate() {
        assert_eq!(split["histogram"][name], ds.pixels[i], "pixels of {name}");
        assert_eq!(split["images_per_class"][name], ds.images[i], "images of {name}");
        assert!(out.contains(name), "{name} missing from the report:\n{out}");
    }
    let never: Vec<&str> = NAMES.iter().enumerate().filter(|(i, _)| ds.pixels[*i] == 0).map(|(_, n)| *n).collect();
    assert_eq!(split["classes_never_seen"], serde_json::json!(never));

    // A colour no class declares: reported with its file, and training refuses it in
    // the same words.
    let bad = ds.root.join("labels/00003.png");
    let mut lbl = Image8::open_rgb(&bad).unwrap();
    lbl.data[..12].copy_from_slice(&[9; 12]);
    lbl.save_png(&bad).unwrap();
    let (code, out, _) = data_check(&ds, &ds.classes, &json);
    assert_eq!(code, 2, "{out}");
    let line = out.lines().find(|l| l.contains("values no class declares: 9,9,9 (4 pixels)")).unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("00003.png"), "{line}");
    let message = line.split("no class declares").nth(1).unwrap().to_string();
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(v["splits"][0]["undeclared"]["9,9,9"]["pixels"], 4);
    assert!(v["splits"][0]["undeclared"]["9,9,9"]["files"][0].as_str().unwrap().ends_with("00003.png"));
    let run = d.path().join("run");
    let clip = fixture("clip_a_state.pt.gz");
    let (code, _, err) = run_famix(&[
        "train",
        "--clip",
        &s(&clip),
        "--dataset",
        "folder",
        "--data-root",
        &s(&ds.root),
        "--out",
        &s(&run),
        "--classes",
        &s(&ds.classes),
        "--no-styles",
        "--batch",
        "8",
        "--crop",
        "48",
        "--iters",
        "1",
        "--device",
        "cpu",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains(&message) && err.contains("00003.png"), "training must refuse in data check's words:\n{err}");

    // Only when the class file says so does an undeclared colour mean ignore.
    let lenient = d.path().join("lenient.json");
    std::fs::write(&lenient, SIX.replacen("\"ignore\": [[0, 0, 0]],", "\"ignore\": [[0, 0, 0]], \"unknown\": \"ignore\",", 1)).unwrap();
    let (code, out, _) = data_check(&ds, &lenient, &json);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("9,9,9: 4 pixels"), "{out}");
}

/// The names of a JSON object's keys.
fn keys(v: &serde_json::Value) -> Vec<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

fn sorted_names() -> Vec<String> {
    let mut n: Vec<String> = NAMES.iter().map(|s| s.to_string()).collect();
    n.sort();
    n
}

#[test]
fn a_six_class_model_carries_its_classes_everywhere_and_refuses_others() {
    let d = tmpdir();
    let ds = six_class(d.path());
    let (root, classes) = (s(&ds.root), s(&ds.classes));
    // Mining: the bank records the class set; the prompts carry the class words.
    let bank = d.path().join("bank.safetensors");
    let clip = s(&fixture("clip_a.safetensors.gz"));
    let (code, _, err) = run_famix(&[
        "mine-styles",
        "--clip",
        &clip,
        "--dataset",
        "folder",
        "--data-root",
        &root,
        "--split",
        "train",
        "--classes",
        &classes,
        "--crop",
        "72",
        "--batch",
        "4",
        "--iters",
        "2",
        "--out",
        &s(&bank),
        "--device",
        "cpu",
    ]);
    assert_eq!(code, 0, "{err}");
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(bank.with_extension("json")).unwrap()).unwrap();
    let words = ["road and pavement", "construction", "pole and traffic sign", "vegetation", "sky", "car or person"];
    let prompts: Vec<String> = summary["origins"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(class, list)| list.as_array().unwrap().iter().map(move |o| (class.clone(), o["prompt"].as_str().unwrap().to_string())))
        .map(|(class, prompt)| {
            if let Some(i) = NAMES.iter().position(|n| *n == class) {
                assert!(prompt.ends_with(words[i]), "class {class}: prompt {prompt:?} lacks {:?}", words[i]);
            }
            prompt
        })
        .collect();
    assert!(!prompts.is_empty());
    assert_eq!(summary["classes"]["classes"].as_array().unwrap().len(), 6);

    // Training: config, log and checkpoint header carry the six names.
    let run = d.path().join("run");
    let clip_state = s(&fixture("clip_a_state.pt.gz"));
    let train = |bank: &Path, out: &Path, extra: &[&str]| {
        let args = [
            "train",
            "--clip",
            &clip_state,
            "--dataset",
            "folder",
            "--data-root",
            &root,
            "--out",
            &s(out),
            "--styles",
            &s(bank),
            "--batch",
            "2",
            "--crop",
            "48",
            "--iters",
            "2",
            "--device",
            "cpu",
            "--val-dataset",
            "folder",
            "--val-root",
            &root,
            "--val-limit",
            "2",
            "--val-interval",
            "2",
        ];
        run_famix(&args.iter().copied().chain(extra.iter().copied()).collect::<Vec<_>>())
    };
    let (code, _, err) = train(&bank, &run, &["--classes", &classes]);
    assert_eq!(code, 0, "{err}");
    let header: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("latest.json")).unwrap()).unwrap();
    assert_eq!(header["class_names"], serde_json::json!(NAMES));
    assert_eq!(header["palette"], serde_json::json!(COLORS));
    assert_eq!(header["classes"]["classes"][0]["prompt"], "road and pavement");
    let log = std::fs::read_to_string(run.join("train_log.jsonl")).unwrap();
    let val = log.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).find(|v| v.get("val_miou").is_some()).unwrap();
    assert_eq!(keys(&val["per_class_iou"]), sorted_names());

    // A bank of another class set and, on a trained model, another class file are refused by name.
    let cs_bank = reference_bank(d.path());
    let (code, _, err) = train(&cs_bank, &d.path().join("run2"), &["--classes", &classes]);
    assert_ne!(code, 0);
    assert!(err.contains("mined for other classes") && err.contains("19 classes vs 6"), "{err}");
    let ckpt = s(&run.join("latest.safetensors"));
    let other = d.path().join("other.json");
    std::fs::write(&other, SIX.replace("\"sky\"", "\"heaven\"")).unwrap();
    let (code, _, err) = eval_cpu(Path::new(&ckpt), "folder", &ds.root, &["--split", "train", "--classes", &s(&other)]);
    assert_ne!(code, 0);
    assert!(err.contains("class 4 is \"heaven\" vs \"sky\""), "{err}");

    // Eval without the flag reads the labels with the checkpoint's own class set.
    let j = d.path().join("eval.json");
    let (code, _, err) = eval_cpu(Path::new(&ckpt), "folder", &ds.root, &["--split", "train", "--json", &s(&j)]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&j).unwrap()).unwrap();
    assert_eq!(v["class_names"], serde_json::json!(NAMES));
    assert_eq!(keys(&v["per_class_iou"]), sorted_names());
    let total: u64 =
        v["confusion_matrix"].as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap()).map(|x| x.as_u64().unwrap()).sum();
    assert_eq!(total, ds.pixels.iter().sum::<u64>(), "every labelled pixel, none of the ignored ones");

    // Predict: colour maps in the six colours.
    let pred = d.path().join("pred");
    let (code, _, err) = predict_cpu(Path::new(&ckpt), &pred, &ds.root.join("images/00001.png"), &["--classes", &classes]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = predict_cpu(Path::new(&ckpt), &pred, &ds.root.join("images/00001.png"), &["--label-format", "labelid"]);
    assert!(code != 0 && err.contains("Cityscapes label ids"), "{err}");
    let color = Image8::open_rgb(&pred.join("00001_color.png")).unwrap();
    assert!(color.data.chunks(3).all(|p| COLORS.iter().any(|c| c == p)), "a colour outside the palette");

    // Export: the ONNX metadata holds the class set.
    let onnx = d.path().join("m.onnx");
    let (code, _, err) = run_famix(&["export", "--checkpoint", &ckpt, "--out", &s(&onnx), "--classes", &classes]);
    assert_eq!(code, 0, "{err}");
    let x = tch::Tensor::zeros([1, 3, 32, 32], (tch::Kind::Float, tch::Device::Cpu));
    let (_, meta) = crate::export::onnx_run(d.path(), &onnx, &x);
    assert_eq!(
        meta["famix.class_names"].as_str().map(|t| serde_json::from_str::<serde_json::Value>(t).unwrap()),
        Some(serde_json::json!(NAMES))
    );
    let set: famix::data::classes::ClassSet = serde_json::from_str(meta["famix.classes"].as_str().unwrap()).unwrap();
    assert_eq!(set, famix::data::classes::ClassSet::from_file(&ds.classes).unwrap());

    // Serve: the legend JSON.
    let server = crate::serve::Server::start(&ckpt, &[]);
    let c: serde_json::Value =
        serde_json::from_str(&ureq::get(&format!("{}/v1/classes", server.url)).call().unwrap().into_string().unwrap()).unwrap();
    let served: Vec<(String, [u8; 3])> = c["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().into(), serde_json::from_value(e["color"].clone()).unwrap()))
        .collect();
    assert_eq!(served, NAMES.iter().map(|n| n.to_string()).zip(COLORS).collect::<Vec<_>>());
    drop(server);

    // Browse: the legend names the classes present.
    let page = d.path().join("browse");
    let (code, _, err) = run_famix(&["data", "browse", "folder", &root, "--out", &s(&page), "--split", "train", "--classes", &classes]);
    assert_eq!(code, 0, "{err}");
    let html = std::fs::read_to_string(page.join("index.html")).unwrap();
    assert!(html.contains("construction") && html.contains("movable"), "legend without the class names");
}

#[test]
fn the_built_in_cityscapes_set_as_a_class_file_changes_nothing() {
    let d = tmpdir();
    let ckpt = d.path().join("tiny.safetensors");
    tch::manual_seed(5);
    famix::model::checkpoint::save_random_tiny(&ckpt, 19).unwrap();
    let header = std::fs::read_to_string(ckpt.with_extension("json")).unwrap();
    assert!(!header.contains("\"classes\""), "a Cityscapes header holds only class_names and palette, as before");
    let file = d.path().join("cityscapes.json");
    std::fs::write(&file, serde_json::to_string_pretty(&famix::data::classes::ClassSet::cityscapes()).unwrap()).unwrap();
    let (a, b) = (d.path().join("a.json"), d.path().join("b.json"));
    let (code, _, err) = eval_cityscapes_mini(&ckpt, &["--json", &s(&a)]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = eval_cityscapes_mini(&ckpt, &["--json", &s(&b), "--classes", &s(&file)]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap(), "eval JSON differs with the built-in class file");
    let img = fixture("img_a.png");
    let (pa, pb) = (d.path().join("pa"), d.path().join("pb"));
    assert_eq!(predict_cpu(&ckpt, &pa, &img, &[]).0, 0);
    assert_eq!(predict_cpu(&ckpt, &pb, &img, &["--classes", &s(&file)]).0, 0);
    for f in ["img_a_trainid.png", "img_a_color.png"] {
        assert_eq!(std::fs::read(pa.join(f)).unwrap(), std::fs::read(pb.join(f)).unwrap(), "{f} differs");
    }
}
