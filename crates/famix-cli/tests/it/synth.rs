//! The procedural driving world (`famix data synth`): a layout has the same labels
//! under every condition, the labels sit where the rendered geometry is (each class
//! has its own look in daylight), every class the generator lists appears, and the
//! captions name the condition and only classes that are in the picture.
use crate::common;

use std::collections::BTreeMap;

use common::*;
use famix::rng::Rng;
use famix::Image8;
use famix_synth::{caption, layout, scene::CLASSES, Condition};

#[test]
fn same_layout_same_labels_under_every_condition() {
    let d = tmpdir();
    let out = d.path().join("w");
    let conds = Condition::ALL.map(|c| c.name()).join(",");
    let (code, stdout, err) =
        run_famix(&["data", "synth", "--out", out.to_str().unwrap(), "--conditions", &conds, "--split", "val=6", "--size", "96x72"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(stdout.lines().count(), Condition::ALL.len());
    for i in 0..6 {
        let name = format!("{i:04}.png");
        let day_lbl = std::fs::read(out.join("day/labels/val").join(&name)).unwrap();
        let day_img = Image8::open_rgb(&out.join("day/images/val").join(&name)).unwrap();
        for c in Condition::ALL {
            let dir = out.join(c.name());
            assert_eq!(std::fs::read(dir.join("labels/val").join(&name)).unwrap(), day_lbl, "{c:?} {name}: labels differ from day's");
            if c != Condition::Day {
                let img = Image8::open_rgb(&dir.join("images/val").join(&name)).unwrap();
                assert_ne!(img.data, day_img.data, "{c:?} {name} looks exactly like day");
            }
        }
    }
    // The sets are `folder` datasets famix reads.
    let (code, _, err) =
        run_famix(&["data", "check", "--dataset", "folder", "--data-root", out.join("night").to_str().unwrap(), "--split", "val"]);
    assert_eq!(code, 0, "{err}");
}

/// Mean daylight colour per class over many scenes (labels decide the class).
fn mean_colors(n: u64) -> BTreeMap<u8, [f64; 3]> {
    let mut acc: BTreeMap<u8, ([f64; 3], f64)> = BTreeMap::new();
    for i in 0..n {
        let scene = layout::generate(128, 96, &mut Rng::derive(5, &[i]));
        let img = famix_synth::look::render(&scene, Condition::Day, &mut Rng::derive(6, &[i]));
        for (k, p) in scene.pixels.iter().enumerate() {
            let e = acc.entry(p.class).or_insert(([0.0; 3], 0.0));
            for c in 0..3 {
                e.0[c] += img.data[k * 3 + c] as f64;
            }
            e.1 += 1.0;
        }
    }
    acc.into_iter().map(|(k, (s, n))| (k, s.map(|v| v / n))).collect()
}

/// Labels sit on the geometry they name: in daylight the sky is blue, the road grey,
/// vegetation green, and every listed class appears in 40 scenes.
#[test]
fn labels_match_the_rendered_geometry_and_every_class_appears() {
    let m = mean_colors(40);
    for c in CLASSES {
        assert!(m.contains_key(&c), "class {c} never appears in 40 scenes");
    }
    assert!(m.keys().all(|c| CLASSES.contains(c)), "a class outside the list: {:?}", m.keys());
    let [r, _, b] = m[&10];
    assert!(b > r + 30.0 && b > 150.0, "sky is not blue: {:?}", m[&10]);
    let [r, g, b] = m[&0];
    assert!((r - g).abs() < 12.0 && (g - b).abs() < 12.0 && r < 140.0, "road is not dark grey: {:?}", m[&0]);
    let [r, g, b] = m[&8];
    assert!(g > r + 15.0 && g > b + 15.0, "vegetation is not green: {:?}", m[&8]);
}

/// Captions say the condition's word and mention only what is visible.
#[test]
fn captions_name_the_condition_and_visible_classes() {
    let names = famix::data::labels::default_class_names(19);
    for i in 0..30u64 {
        let scene = layout::generate(128, 96, &mut Rng::derive(9, &[i]));
        let c = Condition::ALL[i as usize % Condition::ALL.len()];
        let text = caption::caption(&scene, c, &mut Rng::derive(10, &[i]));
        assert!(text.contains(c.word()), "{text:?} does not say {}", c.word());
        let present: Vec<&String> = scene.labels().data.iter().map(|&k| &names[k as usize]).collect();
        for m in caption::mentions(&scene) {
            let class =
                names.iter().filter(|n| m.contains(n.as_str())).max_by_key(|n| n.len()).unwrap_or_else(|| panic!("{m:?} names no class"));
            assert!(present.contains(&class), "{m:?} is not in the picture");
        }
    }
}
