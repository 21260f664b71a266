//! The segmenter through the command: a reference checkpoint imported, then a folder
//! predicted (the library's own segmenter tests are in `crates/famix/tests/lib`).

use crate::common;

use common::*;

#[test]
fn cli_import_and_predict_folder() {
    let dir = tmpdir();
    let ck = dir.path().join("imported.safetensors");
    let (code, _, err) = run_famix(&["import-checkpoint", fixture("seg_a_ref.pth").to_str().unwrap(), "--out", ck.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let imgs = dir.path().join("imgs/sub");
    std::fs::create_dir_all(&imgs).unwrap();
    std::fs::copy(fixture("img_a.png"), imgs.join("a.png")).unwrap();
    std::fs::copy(fixture("img_a.png"), dir.path().join("imgs/b.png")).unwrap();
    std::fs::write(dir.path().join("imgs/broken.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let out = dir.path().join("out");
    let (code, _, err) = run_famix(&[
        "predict",
        "--checkpoint",
        ck.to_str().unwrap(),
        dir.path().join("imgs").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--overlay",
        "--device",
        "cpu",
        "--batch",
        "2",
    ]);
    assert_eq!(code, 2, "one corrupt image → exit code 2: {err}");
    assert!(err.contains("broken.png"), "{err}");
    for stem in ["sub/a", "b"] {
        for suffix in ["_trainid.png", "_color.png", "_overlay.png"] {
            let p = out.join(format!("{stem}{suffix}"));
            assert!(p.exists(), "{} missing", p.display());
        }
    }
    let want = std::fs::read(fixture("seg_a_pred_img_a.png")).unwrap();
    let want = image::load_from_memory(&want).unwrap().to_luma8();
    let got = image::open(out.join("b_trainid.png")).unwrap().to_luma8();
    assert_eq!(got, want, "predict labels differ from PyTorch");
    let color = image::open(out.join("b_color.png")).unwrap().to_rgb8();
    let l = got.get_pixel(0, 0)[0] as usize;
    assert_eq!(color.get_pixel(0, 0).0, famix::data::labels::CITYSCAPES_PALETTE[l]);
}
