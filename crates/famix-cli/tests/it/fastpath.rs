//! The inference fast path agrees with the plain path: every batch norm folded and
//! channels-last layouts give the same logits within 1e-4 (max abs). (The training
//! fast path is checked against PyTorch's step in tests/train.rs.)
use crate::common;

use common::*;
use famix::model::checkpoint;
use famix::{PredictOptions, Segmenter};
use tch::{Device, Kind, Tensor};

fn logits(m: &Segmenter, x: &Tensor) -> Tensor {
    m.predict_logits(x, 1.0, false)
}

#[test]
fn fused_inference_matches_the_plain_path() {
    let d = tmpdir();
    tch::manual_seed(21);
    let tiny = checkpoint::save_random_tiny(&d.path().join("tiny"), 19).unwrap();
    for (path, os) in [(fixture("seg_a_ref.pth"), None), (tiny.clone(), None), (tiny, Some(famix::clip::OutputStride::Os8))] {
        let mut m = checkpoint::load(&path, Device::Cpu, os).unwrap().model;
        randomise_bn(&m);
        let x = Tensor::randn([2, 3, 72, 96], (Kind::Float, Device::Cpu));
        let plain = logits(&m, &x);
        m.fold();
        assert!(m.is_folded());
        let fused = logits(&m, &x);
        let diff = max_abs_diff(&plain, &fused);
        assert!(diff <= 1e-4, "{}: fused logits differ by {diff:e} > 1e-4", path.display());
        // The whole prediction (normalisation, argmax) through the public API.
        let u8s = Tensor::randint(256, [1, 3, 64, 80], (Kind::Uint8, Device::Cpu));
        let (ids_fused, _) = m.predict_ids(&u8s, &PredictOptions::default()).unwrap();
        m.unfold();
        let (ids_plain, _) = m.predict_ids(&u8s, &PredictOptions::default()).unwrap();
        let agree = ids_fused.eq_tensor(&ids_plain).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
        assert!(agree >= 0.999, "{}: argmax agreement {agree}", path.display());
    }
    // The library's loader turns the fast path on.
    assert!(Segmenter::load(fixture("seg_a_ref.pth"), Device::Cpu).unwrap().is_folded());
}
