//! Dataset layouts and exact label conversions (docs/src/design.md §6), transforms bit-exact with
//! Pillow, metrics against hand-computed values, the loader's determinism, bad input,
//! and `famix eval` / `famix data check` against the PyTorch twin's numbers.
use crate::common;

use std::path::Path;

use common::*;
use famix::data::augment::{color_jitter, dominant_classes, eval_transform};
use famix::data::datasets::EvalTransform;
use famix::data::{Dataset, DatasetKind};
use famix::eval::metrics::Metrics;
use famix::imageops::{Filter, Image8};

fn write_gray(path: &Path, w: usize, h: usize, data: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::GrayImage::from_raw(w as u32, h as u32, data.to_vec()).unwrap().save(path).unwrap();
}

fn write_rgb(path: &Path, w: usize, h: usize) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let img = image::RgbImage::from_fn(w as u32, h as u32, |x, y| image::Rgb([(x * 9) as u8, (y * 7) as u8, 99]));
    img.save(path).unwrap();
}

/// An 8-bit palette PNG (GTA5's labels are palette images: ids are the indices).
fn write_palette(path: &Path, w: usize, h: usize, data: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut enc = png::Encoder::new(f, w as u32, h as u32);
    enc.set_color(png::ColorType::Indexed);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_palette((0..256).flat_map(|i| [i as u8, (255 - i) as u8, (i * 3) as u8]).collect::<Vec<u8>>());
    enc.write_header().unwrap().write_image_data(data).unwrap();
}

/// Synthia GT: 16-bit RGB, class in channel 0.
fn write_rgb16(path: &Path, w: usize, h: usize, ch0: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut enc = png::Encoder::new(f, w as u32, h as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Sixteen);
    let mut data = Vec::new();
    for &v in ch0 {
        data.extend_from_slice(&(v as u16).to_be_bytes());
        data.extend_from_slice(&7777u16.to_be_bytes()); // instance id channels
        data.extend_from_slice(&3u16.to_be_bytes());
    }
    enc.write_header().unwrap().write_image_data(&data).unwrap();
}

/// Every raw id 0..=255 once, as a 16x16 label.
fn all_ids() -> Vec<u8> {
    (0..=255u8).collect()
}

// Independent transcriptions of docs/src/design.md §6.
fn cityscapes(v: u8) -> u8 {
    let t = [
        (7, 0),
        (8, 1),
        (11, 2),
        (12, 3),
        (13, 4),
        (17, 5),
        (19, 6),
        (20, 7),
        (21, 8),
        (22, 9),
        (23, 10),
        (24, 11),
        (25, 12),
        (26, 13),
        (27, 14),
        (28, 15),
        (31, 16),
        (32, 17),
        (33, 18),
    ];
    t.iter().find(|(k, _)| *k == v).map(|x| x.1).unwrap_or(255)
}
fn mapillary(v: u8) -> u8 {
    let t: &[(&[u8], u8)] = &[
        (&[13, 24, 41], 0),
        (&[2, 15], 1),
        (&[17], 2),
        (&[6], 3),
        (&[3], 4),
        (&[45, 47], 5),
        (&[48], 6),
        (&[50], 7),
        (&[30], 8),
        (&[29], 9),
        (&[27], 10),
        (&[19], 11),
        (&[20, 21, 22], 12),
        (&[55], 13),
        (&[61], 14),
        (&[54], 15),
        (&[58], 16),
        (&[57], 17),
        (&[52], 18),
    ];
    t.iter().find(|(ks, _)| ks.contains(&v)).map(|x| x.1).unwrap_or(255)
}
fn synthia(v: u8) -> u8 {
    let t = [
        (1, 10),
        (2, 2),
        (3, 0),
        (4, 1),
        (5, 4),
        (6, 8),
        (7, 5),
        (8, 13),
        (9, 7),
        (10, 11),
        (11, 18),
        (12, 17),
        (15, 6),
        (16, 9),
        (17, 12),
        (18, 14),
        (19, 15),
        (20, 16),
        (21, 3),
    ];
    t.iter().find(|(k, _)| *k == v).map(|x| x.1).unwrap_or(255)
}
fn train_ids(v: u8) -> u8 {
    if v < 19 {
        v
    } else {
        255
    }
}

fn check_labels(ds: &Dataset, f: fn(u8) -> u8) {
    assert!(!ds.is_empty(), "{} found no samples", ds.describe());
    for i in 0..ds.len() {
        let (img, lbl) = ds.load(i).unwrap();
        assert_eq!((img.width, img.height), (16, 16));
        let want: Vec<u8> = all_ids().into_iter().map(f).collect();
        assert_eq!(lbl.data, want, "{}: label conversion differs", ds.samples[i].label.display());
    }
}

#[test]
fn every_dataset_layout_and_label_map() {
    let d = tmpdir();
    let r = d.path();
    let ids = all_ids();
    // GTA5 (palette labels; names from the shipped split lists).
    write_rgb(&r.join("gta5/images/00001.png"), 16, 16);
    write_palette(&r.join("gta5/labels/00001.png"), 16, 16, &ids);
    write_rgb(&r.join("gta5/images/09998.png"), 16, 16);
    write_palette(&r.join("gta5/labels/09998.png"), 16, 16, &ids);
    let train = Dataset::open(DatasetKind::Gta5, &r.join("gta5"), "train", None).unwrap();
    assert_eq!(train.len(), 1);
    assert_eq!(train.issues.len(), 12382 - 1, "listed-but-missing files are reported");
    check_labels(&train, cityscapes);
    check_labels(&Dataset::open(DatasetKind::Gta5, &r.join("gta5"), "val", None).unwrap(), cityscapes);
    assert_eq!(Dataset::open(DatasetKind::Gta5, &r.join("gta5"), "all", None).unwrap().len(), 2);
    // Cityscapes.
    write_rgb(&r.join("cs/leftImg8bit/val/bonn/bonn_000001_000019_leftImg8bit.png"), 16, 16);
    write_gray(&r.join("cs/gtFine/val/bonn/bonn_000001_000019_gtFine_labelIds.png"), 16, 16, &ids);
    check_labels(&Dataset::open(DatasetKind::Cityscapes, &r.join("cs"), "val", None).unwrap(), cityscapes);
    // ACDC (fog keeps only 1920x1080 images: a 16x16 fog image is filtered out).
    for cond in ["night", "fog"] {
        write_rgb(&r.join(format!("acdc/rgb_anon/{cond}/val/GOPR0001/GOPR0001_frame_000001_rgb_anon.png")), 16, 16);
        write_gray(&r.join(format!("acdc/gt/{cond}/val/GOPR0001/GOPR0001_frame_000001_gt_labelIds.png")), 16, 16, &ids);
    }
    check_labels(&Dataset::open(DatasetKind::Acdc, &r.join("acdc"), "val", Some("night")).unwrap(), cityscapes);
    assert_eq!(Dataset::open(DatasetKind::Acdc, &r.join("acdc"), "val", Some("fog")).unwrap().len(), 0);
    assert!(Dataset::open(DatasetKind::Acdc, &r.join("acdc"), "val", None).is_err());
    // BDD100K (JPEG images, train-id labels; both label namings).
    let jpg = image::RgbImage::from_fn(16, 16, |x, _| image::Rgb([x as u8 * 10, 0, 0]));
    std::fs::create_dir_all(r.join("bdd/images/val")).unwrap();
    jpg.save(r.join("bdd/images/val/a1.jpg")).unwrap();
    jpg.save(r.join("bdd/images/val/b2.jpg")).unwrap();
    write_gray(&r.join("bdd/labels/val/a1.png"), 16, 16, &ids);
    write_gray(&r.join("bdd/labels/val/b2_train_id.png"), 16, 16, &ids);
    let bdd = Dataset::open(DatasetKind::Bdd100k, &r.join("bdd"), "val", None).unwrap();
    assert_eq!(bdd.len(), 2);
    check_labels(&bdd, train_ids);
    // Mapillary.
    std::fs::create_dir_all(r.join("map/validation/images")).unwrap();
    jpg.save(r.join("map/validation/images/m1.jpg")).unwrap();
    write_gray(&r.join("map/validation/labels/m1.png"), 16, 16, &ids);
    check_labels(&Dataset::open(DatasetKind::Mapillary, &r.join("map"), "val", None).unwrap(), mapillary);
    // Synthia, flat official layout split by the validation list, and split folders.
    write_rgb(&r.join("syn/RGB/0000000.png"), 16, 16);
    write_rgb16(&r.join("syn/GT/LABELS/0000000.png"), 16, 16, &ids);
    write_rgb(&r.join("syn/RGB/0000001.png"), 16, 16);
    write_rgb16(&r.join("syn/GT/LABELS/0000001.png"), 16, 16, &ids);
    let val = Dataset::open(DatasetKind::Synthia, &r.join("syn"), "val", None).unwrap();
    assert_eq!(val.len(), 1, "0000000.png is in the validation list");
    check_labels(&val, synthia);
    check_labels(&Dataset::open(DatasetKind::Synthia, &r.join("syn"), "train", None).unwrap(), synthia);
    write_rgb(&r.join("syn2/RGB/train/x.png"), 16, 16);
    write_rgb16(&r.join("syn2/GT/LABELS/train/x.png"), 16, 16, &ids);
    check_labels(&Dataset::open(DatasetKind::Synthia, &r.join("syn2"), "train", None).unwrap(), synthia);
    // Generic folder.
    write_rgb(&r.join("own/images/a/x.png"), 16, 16);
    write_gray(&r.join("own/labels/a/x.png"), 16, 16, &ids);
    check_labels(&Dataset::open(DatasetKind::Folder, &r.join("own"), "train", None).unwrap(), train_ids);
}

#[test]
fn bad_input_is_reported_clearly() {
    let d = tmpdir();
    let r = d.path();
    let err = Dataset::open(DatasetKind::Cityscapes, &r.join("nothing"), "val", None).err().unwrap();
    assert!(format!("{err:#}").contains("not found"), "{err:#}");
    let cs = r.join("cs");
    let lbl_dir = cs.join("gtFine/val/c");
    let img_dir = cs.join("leftImg8bit/val/c");
    // image without label
    write_rgb(&img_dir.join("c_000000_000000_leftImg8bit.png"), 16, 16);
    // size mismatch
    write_rgb(&img_dir.join("c_000001_000000_leftImg8bit.png"), 16, 16);
    write_gray(&lbl_dir.join("c_000001_000000_gtFine_labelIds.png"), 8, 8, &[7; 64]);
    // corrupt PNG
    write_rgb(&img_dir.join("c_000002_000000_leftImg8bit.png"), 16, 16);
    std::fs::write(lbl_dir.join("c_000002_000000_gtFine_labelIds.png"), b"\x89PNG\r\n\x1a\ngarbage").unwrap();
    // RGB label (a colour visualisation)
    write_rgb(&img_dir.join("c_000003_000000_leftImg8bit.png"), 16, 16);
    write_rgb(&lbl_dir.join("c_000003_000000_gtFine_labelIds.png"), 16, 16);
    // 16-bit label with ids > 255
    write_rgb(&img_dir.join("c_000004_000000_leftImg8bit.png"), 16, 16);
    {
        let f = std::io::BufWriter::new(std::fs::File::create(lbl_dir.join("c_000004_000000_gtFine_labelIds.png")).unwrap());
        let mut enc = png::Encoder::new(f, 16, 16);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Sixteen);
        let data: Vec<u8> = (0..256u16).flat_map(|v| (v * 3).to_be_bytes()).collect();
        enc.write_header().unwrap().write_image_data(&data).unwrap();
    }
    // truncated image
    let good = r.join("good.png");
    write_rgb(&good, 16, 16);
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(img_dir.join("c_000005_000000_leftImg8bit.png"), &bytes[..bytes.len() / 2]).unwrap();
    write_gray(&lbl_dir.join("c_000005_000000_gtFine_labelIds.png"), 16, 16, &[7; 256]);
    // label without image
    write_gray(&lbl_dir.join("c_000009_000000_gtFine_labelIds.png"), 16, 16, &[7; 256]);

    let ds = Dataset::open(DatasetKind::Cityscapes, &cs, "val", None).unwrap();
    assert_eq!(ds.len(), 5);
    let problems: Vec<String> = ds.issues.iter().map(|i| format!("{} {}", i.path, i.problem)).collect();
    assert!(problems.iter().any(|p| p.contains("c_000000") && p.contains("no label")), "{problems:?}");
    assert!(problems.iter().any(|p| p.contains("c_000009") && p.contains("without an image")), "{problems:?}");
    let msgs: Vec<String> = (0..ds.len()).map(|i| format!("{:#}", ds.load(i).expect_err("all five are bad"))).collect();
    assert!(msgs[0].contains("8x8") && msgs[0].contains("16x16"), "{}", msgs[0]);
    assert!(msgs[1].contains("corrupt") && msgs[1].contains("c_000002"), "{}", msgs[1]);
    assert!(msgs[2].contains("colour visualisation"), "{}", msgs[2]);
    assert!(msgs[3].contains("16-bit") && msgs[3].contains("< 256"), "{}", msgs[3]);
    assert!(msgs[4].contains("c_000005_000000_leftImg8bit.png"), "{}", msgs[4]);

    // `data check` lists them all and exits 2; `eval` stops unless --skip-bad.
    let json = r.join("check.json");
    let (code, out, err) = run_famix(&[
        "data",
        "check",
        "--dataset",
        "cityscapes",
        "--data-root",
        cs.to_str().unwrap(),
        "--split",
        "val",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.contains("5 pairs") && out.contains("2 missing partners"), "{out}");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["splits"][0]["bad"].as_array().unwrap().len(), 5);
    let (code, _, err) = eval_cpu(&fixture("seg_a_ref.pth"), "cityscapes", &cs, &[]);
    assert_ne!(code, 0);
    assert!(err.contains("--skip-bad"), "{err}");
    let (code, out, err) = eval_cpu(&fixture("seg_a_ref.pth"), "cityscapes", &cs, &["--skip-bad"]);
    // Every sample is skipped: nothing to measure, and the error says so instead of
    // printing a NaN mIoU.
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("5 skipped") && err.contains("no labelled pixel"), "{err}");

    // A root that is a file: every default split is missing, which `data check` reports
    // as a failure (exit 2) naming the file as a file, not as missing.
    let file = fixture("img_a.png");
    let (code, out, err) = run_famix(&["data", "check", "--dataset", "cityscapes", "--data-root", file.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.contains("is a file, not a folder") && out.contains("no split of cityscapes found"), "{out}");
}

#[test]
fn metrics_match_hand_computed_values() {
    // 3 classes; class 2 absent from ground truth and prediction.
    // gt\pred  0  1  2
    //   0      3  1  0
    //   1      2  4  0
    //   2      0  0  0
    let m = Metrics::from_matrix(&[3, 1, 0, 2, 4, 0, 0, 0, 0], 3);
    let iou0 = 3.0 / (4.0 + 5.0 - 3.0);
    let iou1 = 4.0 / (6.0 + 5.0 - 4.0);
    assert!((m.per_class_iou[0].unwrap() - iou0).abs() < 1e-12);
    assert!((m.per_class_iou[1].unwrap() - iou1).abs() < 1e-12);
    assert_eq!(m.per_class_iou[2], None);
    assert!((m.miou - (iou0 + iou1) / 2.0).abs() < 1e-12);
    assert!((m.overall_acc - 0.7).abs() < 1e-12);
    assert!((m.mean_acc - (0.75 + 4.0 / 6.0) / 2.0).abs() < 1e-12);
    // Predicted but absent from ground truth: IoU 0, counted; accuracy undefined.
    let m = Metrics::from_matrix(&[5, 1, 0, 0], 2);
    assert_eq!(m.per_class_iou[1], Some(0.0));
    assert_eq!(m.per_class_acc[1], None);
    assert!((m.miou - (5.0 / 6.0) / 2.0).abs() < 1e-12);
}

#[test]
fn confusion_counts_only_valid_labels() {
    let mut c = famix::eval::metrics::Confusion::new(3, tch::Device::Cpu);
    let gt = tch::Tensor::from_slice(&[0i64, 1, 2, 255, 1, 7]);
    let pred = tch::Tensor::from_slice(&[0i64, 1, 1, 0, 0, 2]);
    c.add(&gt, &pred);
    assert_eq!(c.matrix(), vec![1, 0, 0, 1, 1, 0, 0, 1, 0]);
}

/// The device-side accumulation (u8 labels, one index_add per batch) counts exactly
/// what a per-pixel loop counts (tolerance: none, integer counts).
#[test]
fn confusion_equals_a_pixel_loop() {
    let k = 19usize;
    let gt: Vec<u8> = (0..40_000u32).map(|i| if i % 13 == 0 { 255 } else { ((i * 7919) % 23) as u8 }).collect();
    let pred: Vec<i64> = (0..40_000u32).map(|i| ((i * 104_729) % k as u32) as i64).collect();
    let mut want = vec![0u64; k * k];
    for (&g, &p) in gt.iter().zip(&pred) {
        if (g as usize) < k {
            want[g as usize * k + p as usize] += 1;
        }
    }
    let mut c = famix::eval::metrics::Confusion::new(k, tch::Device::Cpu);
    let (g, p) = (tch::Tensor::from_slice(&gt).view([2, 100, 200]), tch::Tensor::from_slice(&pred).view([2, 100, 200]));
    c.add(&g.narrow(0, 0, 1), &p.narrow(0, 0, 1));
    c.add(&g.narrow(0, 1, 1), &p.narrow(0, 1, 1));
    assert_eq!(c.matrix(), want);
}

#[test]
fn jitter_and_resizes_are_bit_exact_with_pillow() {
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("transforms.json")).unwrap()).unwrap();
    let img = Image8::open_rgb(&fixture("img_a.png")).unwrap();
    for case in meta["jitter"].as_array().unwrap() {
        let f: Vec<f64> = case["factors"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let o: Vec<usize> = case["order"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        let got = color_jitter(&img, [f[0], f[1], f[2]], [o[0], o[1], o[2]]);
        let want = Image8::open_rgb(&fixture(case["file"].as_str().unwrap())).unwrap();
        assert_img_eq(&got, &want, &format!("jitter {f:?} {o:?}"));
    }
    for case in meta["resize"].as_array().unwrap() {
        let filter = match case["filter"].as_str().unwrap() {
            "bicubic" => Filter::Bicubic,
            "bilinear" => Filter::Bilinear,
            _ => Filter::Nearest,
        };
        let (w, h) = (case["width"].as_u64().unwrap() as usize, case["height"].as_u64().unwrap() as usize);
        let want = Image8::open_rgb(&fixture(case["file"].as_str().unwrap())).unwrap();
        assert_img_eq(&img.resize(w, h, filter), &want, &format!("{case}"));
    }
}

#[track_caller]
fn assert_img_eq(got: &Image8, want: &Image8, what: &str) {
    assert_eq!((got.width, got.height, got.channels), (want.width, want.height, want.channels), "{what}: size");
    if let Some(i) = got.data.iter().zip(&want.data).position(|(a, b)| a != b) {
        let differing = got.data.iter().zip(&want.data).filter(|(a, b)| a != b).count();
        panic!("{what}: {differing} bytes differ, first at byte {i}: {} vs {}", got.data[i], want.data[i]);
    }
}

fn gray(path: &Path) -> Image8 {
    let g = image::open(path).unwrap().to_luma8();
    Image8::from_raw(g.width() as usize, g.height() as usize, 1, g.into_raw()).unwrap()
}

#[test]
fn mapillary_and_gta5_eval_transforms() {
    for name in ["land", "port"] {
        let img = Image8::open_rgb(&fixture(&format!("map_{name}_img.png"))).unwrap();
        let lbl = gray(&fixture(&format!("map_{name}_lbl.png")));
        let (ti, tl) = eval_transform(img, lbl, EvalTransform::ResizeHeightCropPad { size: 64 });
        assert_img_eq(&ti, &Image8::open_rgb(&fixture(&format!("map_{name}_img_t.png"))).unwrap(), &format!("{name} image"));
        assert_img_eq(&tl, &gray(&fixture(&format!("map_{name}_lbl_t.png"))), &format!("{name} label"));
    }
    // GTA5 validation: centre crop 1046x1914 of a 1914x1052 frame = rows 3..1049.
    let img = Image8::new(1914, 1052, 3, 0);
    let mut lbl = Image8::new(1914, 1052, 1, 0);
    for y in 0..1052 {
        lbl.data[y * 1914] = (y % 251) as u8;
    }
    let (ti, tl) = eval_transform(img, lbl, EvalTransform::CenterCrop { height: 1046, width: 1914 });
    assert_eq!((ti.width, ti.height, tl.width, tl.height), (1914, 1046, 1914, 1046));
    assert_eq!(tl.data[0], 3);
}

#[test]
fn dominant_classes_per_cell() {
    // Cells follow the stride-4 features: a 24x24 crop has 6x6 features.
    let mut l = Image8::new(24, 24, 1, 0);
    for y in 0..24 {
        for x in 0..24 {
            l.data[y * 24 + x] = if x < 12 {
                4
            } else if y < 12 {
                255
            } else {
                9
            };
        }
    }
    assert_eq!(dominant_classes(&l, 2), vec![4, 255, 4, 9]);
    // 2x2 cells: ties go to the smaller id (4 over 255, 9 over 255, 4 over 9).
    assert_eq!(dominant_classes(&l, 3), vec![4, 4, 255, 4, 4, 9, 4, 4, 9]);
}

#[test]
fn loader_is_deterministic_and_resumable() {
    use famix::data::augment::TrainAugment;
    use famix::data::loader::{BatchLoader, LoaderConfig};
    use std::sync::Arc;
    let d = tmpdir();
    for i in 0..7 {
        let p = d.path().join(format!("images/{i}.png"));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        image::RgbImage::from_fn(40, 30, |x, y| image::Rgb([(x * 6 + i * 20) as u8, (y * 8) as u8, i as u8 * 30])).save(&p).unwrap();
        write_gray(&d.path().join(format!("labels/{i}.png")), 40, 30, &vec![i as u8; 1200]);
    }
    let ds = Arc::new(Dataset::open(DatasetKind::Folder, d.path(), "train", None).unwrap());
    let cfg = LoaderConfig {
        batch: 2,
        augment: TrainAugment { crop: 24, jitter: true, flip: true, random_scale: false },
        grid: 3,
        seed: 5,
        workers: 3,
        prefetch: 4,
        skip_bad: false,
    };
    let run = |a: u64, b: u64| -> Vec<(Vec<usize>, Vec<u8>)> {
        BatchLoader::new(ds.clone(), cfg.clone(), a, b)
            .unwrap()
            .map(|b| {
                let b = b.unwrap();
                (b.indices.clone(), Vec::<u8>::try_from(b.images.flatten(0, -1)).unwrap())
            })
            .collect()
    };
    let full = run(0, 9);
    assert_eq!(full.len(), 9);
    assert_eq!(full, run(0, 9), "same seed, same batches");
    let mut resumed = run(0, 4);
    resumed.extend(run(4, 9));
    assert_eq!(full, resumed, "steps 4.. after a restart equal the uninterrupted run");
    // 3 batches per epoch (drop last): each epoch is a permutation of 6 of the 7 samples.
    for e in 0..3 {
        let mut seen: Vec<usize> = full[e * 3..e * 3 + 3].iter().flat_map(|b| b.0.clone()).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 6);
    }
    assert_ne!(full[0].0, full[3].0, "epochs are shuffled differently");
}

#[test]
fn cli_eval_matches_pytorch_metrics() {
    let exp: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("cityscapes_mini_expected.json")).unwrap()).unwrap();
    let d = tmpdir();
    for (key, extra) in [("scale1", vec![]), ("scale05", vec!["--scale", "0.5"]), ("ensemble05", vec!["--scale", "0.5", "--ensemble"])] {
        let json = d.path().join(format!("{key}.json"));
        let mut args = vec![
            "eval",
            "--checkpoint",
            fixture("seg_a_ref.pth").to_str().unwrap().to_string().leak(),
            "--dataset",
            "cityscapes",
            "--data-root",
            fixture("cityscapes_mini").to_str().unwrap().to_string().leak(),
            "--device",
            "cpu",
            "--json",
            json.to_str().unwrap().to_string().leak(),
        ];
        args.extend(extra);
        let (code, out, err) = run_famix(&args);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("mIoU"), "{out}");
        let got: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        for k in ["miou", "overall_acc", "mean_acc"] {
            let (g, w) = (got[k].as_f64().unwrap(), exp[key][k].as_f64().unwrap());
            assert!((g - w).abs() < 1e-9, "{key} {k}: famix {g} vs PyTorch {w}");
        }
        assert_eq!(got["images"], 3);
        let names = ["road", "sidewalk", "building", "wall", "fence"];
        for (i, n) in names.iter().enumerate() {
            let w = &exp[key]["per_class_iou"][i];
            let g = &got["per_class_iou"][n];
            match (w.as_f64(), g.as_f64()) {
                (Some(a), Some(b)) => assert!((a - b).abs() < 1e-9, "{key} {n}"),
                _ => assert_eq!(w.is_null(), g.is_null(), "{key} {n}"),
            }
        }
    }
}

/// `data browse` draws the samples spread over the split (image | label colours |
/// overlay, the colours those of the converted train ids) and a legend whose shares add
/// up to 100 % (to the 2 decimals printed, ±0.1 in total).
#[test]
fn data_browse_draws_samples_and_a_legend() {
    let d = common::tmpdir();
    let out = d.path().join("browse");
    let root = common::fixture("cityscapes_mini");
    let (code, stdout, err) =
        common::run_famix(&["data", "browse", "cityscapes", root.to_str().unwrap(), "--out", out.to_str().unwrap(), "--samples", "2"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(stdout.trim(), out.join("index.html").display().to_string());
    let ds = famix::data::Dataset::open(famix::data::DatasetKind::Cityscapes, &root, "val", None).unwrap();
    for i in famix::report::browse::spread(ds.len(), 2) {
        let panel = famix::Image8::open_rgb(&out.join(format!("{i:05}.png"))).unwrap();
        let (img, lbl) = ds.load(i).unwrap();
        assert_eq!((panel.width, panel.height), (3 * img.width + 8, img.height));
        let color = famix::render::colorize(&lbl, &famix::data::labels::CITYSCAPES_PALETTE);
        for y in 0..img.height {
            for x in 0..img.width {
                for c in 0..3 {
                    assert_eq!(panel.px(img.width + 4 + x, y, c), color.px(x, y, c));
                }
            }
        }
    }
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    let shares: f64 = html
        .lines()
        .filter(|l| l.contains("class=\"sw\""))
        .map(|l| l.rsplit("<td>").next().unwrap().trim_end_matches("</td></tr>").parse::<f64>().unwrap())
        .sum();
    assert!((shares - 100.0).abs() <= 0.1, "legend shares add up to {shares}");
    let (code, _, err) = common::run_famix(&["data", "browse", "cityscapes", d.path().to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("not found"), "{err}");
}
