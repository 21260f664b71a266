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

/// A folded model whose weights change afterwards answers from the new weights: every
/// layer whose tensors were written runs the plain path until folded again. Checked
/// against the same edit on an unfolded copy (tolerance 1e-4, the fast path's), for a
/// head weight, a batch norm's running statistics in the frozen backbone, and after
/// folding again.
#[test]
fn a_folded_model_never_answers_from_stale_weights() {
    let d = tmpdir();
    tch::manual_seed(23);
    let tiny = checkpoint::save_random_tiny(&d.path().join("tiny"), 19).unwrap();
    let mut folded = Segmenter::load(&tiny, Device::Cpu).unwrap();
    let mut plain = Segmenter::load(&tiny, Device::Cpu).unwrap();
    plain.unfold();
    let x = Tensor::randn([1, 3, 64, 80], (Kind::Float, Device::Cpu));
    let before = logits(&folded, &x);
    let edit = |m: &Segmenter| {
        tch::no_grad(|| {
            for (name, mut t) in m.vs.variables() {
                if name == "classifier.classifier.3.weight" || name == "backbone.layer1.0.bn1.running_mean" {
                    t.copy_(&(&t * 3.0 + 0.5));
                }
            }
        })
    };
    edit(&folded);
    edit(&plain);
    let (after, want) = (logits(&folded, &x), logits(&plain, &x));
    assert!(max_abs_diff(&before, &want) > 0.1, "the edit changes the logits");
    let diff = max_abs_diff(&after, &want);
    assert!(diff <= 1e-4, "the folded model answered from its old weights: {diff:e} from the edited plain model");
    folded.fold();
    let diff = max_abs_diff(&logits(&folded, &x), &want);
    assert!(diff <= 1e-4, "folded again: {diff:e}");
}

/// After a first prediction, changing the output stride, a weight or the engine
/// changes the next prediction exactly as a freshly loaded model in the same state
/// predicts, on both engines: libtorch (folded layers run from the new weights) and ONNX Runtime (its
/// graph is rebuilt from the model's stamp), on the reference fixture. Ids equal; logits
/// within 1e-4 (the parity tolerance of both engines; the stride itself moves them by
/// more than 1e-3).
#[test]
fn every_engine_answers_from_the_current_weights_and_stride() {
    use famix::clip::OutputStride;
    use famix::engine::{attach, Engine};
    tch::manual_seed(29);
    let tiny = fixture("seg_a_ref.pth");
    let x = Tensor::randn([1, 3, 64, 96], (Kind::Float, Device::Cpu));
    let edit = |m: &Segmenter| {
        tch::no_grad(|| {
            for (name, mut t) in m.vs.variables() {
                if name == "classifier.classifier.3.weight" {
                    t.copy_(&(&t * 2.0 + 0.25));
                }
            }
        })
    };
    for (engine, tol) in [(Engine::Torch, 1e-4), (Engine::OnnxRuntime, 1e-4)] {
        let mut m = Segmenter::load(&tiny, Device::Cpu).unwrap();
        assert_eq!(attach(&mut m, engine, famix::Precision::Fp32).unwrap().0, engine);
        let first = m.logits(&x, 1.0, false).unwrap();
        m.set_output_stride(OutputStride::Os8);
        let fresh = Segmenter::load_with_stride(&tiny, Device::Cpu, OutputStride::Os8).unwrap();
        let (got, want) = (m.logits(&x, 1.0, false).unwrap(), logits(&fresh, &x));
        assert!(max_abs_diff(&first, &want) > 1e-3, "{engine:?}: the stride changes the logits: {:e}", max_abs_diff(&first, &want));
        assert!(max_abs_diff(&got, &want) <= tol, "{engine:?} at OS8: {:e}", max_abs_diff(&got, &want));
        assert!(got.argmax(1, false).equal(&want.argmax(1, false)), "{engine:?} at OS8: ids differ");
        edit(&m);
        edit(&fresh);
        let (got, want) = (m.logits(&x, 1.0, false).unwrap(), logits(&fresh, &x));
        assert!(max_abs_diff(&got, &want) <= tol, "{engine:?} after an edit: {:e}", max_abs_diff(&got, &want));
        assert!(got.argmax(1, false).equal(&want.argmax(1, false)), "{engine:?} after an edit: ids differ");
        // Switching the engine (and asking bf16, which ONNX Runtime refuses and the
        // automatic choice answers with libtorch) keeps answering from this state.
        let other = if engine == Engine::Torch { Engine::OnnxRuntime } else { Engine::Torch };
        assert_eq!(attach(&mut m, other, famix::Precision::Fp32).unwrap().0, other);
        let got = m.logits(&x, 1.0, false).unwrap();
        assert!(max_abs_diff(&got, &want) <= tol, "{other:?} after switching: {:e}", max_abs_diff(&got, &want));
        assert_eq!(attach(&mut m, Engine::Auto, famix::Precision::Bf16).unwrap().0, Engine::Torch);
        let got = m.logits(&x, 1.0, false).unwrap();
        assert!(max_abs_diff(&got, &want) <= tol, "auto for bf16: {:e}", max_abs_diff(&got, &want));
    }
}
