"""famix.Segmenter against the `famix` command and against PyTorch's reference network."""
import gc

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import famix
from conftest import famix_cli, fixture

# Same tolerance as the Rust parity tests of the segmenter (max abs, fp32).
TOL = 1e-4


def test_predict_equals_the_command_byte_for_byte(tmp_path):
    ckpt, img = fixture("seg_a_ref.pth"), fixture("img_a.png")
    r = famix_cli("predict", "--checkpoint", ckpt, "--out", tmp_path, "--device", "cpu", img)
    assert r.returncode == 0, r.stderr
    written = np.asarray(Image.open(tmp_path / "img_a_trainid.png"))
    m = famix.Segmenter.load(ckpt)
    ids = m.predict(np.asarray(Image.open(img).convert("RGB")))
    assert isinstance(ids, torch.Tensor) and ids.dtype == torch.int64
    assert np.array_equal(ids.numpy().astype(np.uint8), written)
    # A batch of two gives each image's ids; a torch uint8 image the same as numpy.
    rgb = torch.from_numpy(np.asarray(Image.open(img).convert("RGB")).copy())
    batch = m.predict(torch.stack([rgb, rgb]))
    assert batch.shape == (2, *ids.shape) and torch.equal(batch[0], ids) and torch.equal(batch[1], ids)
    # The colour image is the palette of the ids.
    colour = np.asarray(Image.open(tmp_path / "img_a_color.png").convert("RGB"))
    assert np.array_equal(m.colorize(ids).numpy(), colour)


def test_logits_match_the_reference_network():
    """Logits of famix's reading of a reference .pth equal those of the reference
    network (astra-vision/FAMix's model code) built in PyTorch from the same file, as
    recorded by tools/make_fixtures.py, at output strides 8, 16 and 32."""
    exp = load_file(str(fixture("expected_seg.safetensors")))
    for os_ in (8, 16, 32):
        m = famix.Segmenter.load(fixture("seg_a_ref.pth"), output_stride=os_)
        y = m.logits(exp["x"])
        assert (y - exp[f"logits_os{os_}"]).abs().max().item() <= TOL, f"OS{os_}"


def test_predict_logits_and_prediction_fields():
    m = famix.Segmenter.load(fixture("seg_a_ref.pth"))
    img = np.asarray(Image.open(fixture("img_a.png")).convert("RGB"))
    p = m.predict(img, logits=True, scale=0.5, ensemble=True)
    assert isinstance(p, famix.Prediction)
    assert p.logits.shape == (len(m.classes), *img.shape[:2])
    assert torch.equal(p.logits.argmax(0), p.train_ids)
    exp = load_file(str(fixture("expected_seg.safetensors")))
    assert (p.logits - exp["img_a_logits_ens"][0]).abs().max().item() <= TOL


def test_returned_tensors_share_storage_and_outlive_the_model():
    m = famix.Segmenter.load(fixture("seg_a_ref.pth"))
    a, b = m.state_dict(), m.state_dict()
    key = "classifier.classifier.3.bias"
    assert a[key].data_ptr() == b[key].data_ptr(), "state_dict copies instead of sharing"
    exp = load_file(str(fixture("expected_seg.safetensors")))
    before = m.logits(exp["x"])
    with torch.no_grad():
        a[key][0] += 1.0  # written through PyTorch into famix's own tensor
    m.refresh()  # rebuild what famix derives from the weights (folded copies)
    after = m.logits(exp["x"])
    assert torch.allclose(after[:, 0], before[:, 0] + 1.0, atol=TOL)
    assert torch.equal(after[:, 1:], before[:, 1:])
    ids = m.predict(np.zeros((32, 48, 3), np.uint8))
    del m, a, b
    gc.collect()
    assert ids.shape == (32, 48) and int(ids.max()) < 5  # still valid after the model is gone


def test_a_weight_of_another_shape_is_a_typed_error_and_the_model_survives(tmp_path):
    """A weight replaced through state_dict() by one of another shape (or element type)
    makes predict, logits, refresh and export raise IncompatibleError naming it (not
    a panic); restoring it makes the model answer exactly as before."""
    m = famix.Segmenter.load(fixture("seg_a_ref.pth"))
    exp = load_file(str(fixture("expected_seg.safetensors")))
    before = m.logits(exp["x"])
    sd = m.state_dict()
    key = "backbone.layer1.0.conv1.weight"
    original = sd[key].detach().clone()
    for replacement in (torch.zeros(3, 3, 1, 1), original.double()):
        sd[key].data = replacement
        for call in (lambda: m.logits(exp["x"]), lambda: m.predict(np.zeros((32, 48, 3), np.uint8)), m.refresh,
                     lambda: m.export_onnx(tmp_path / "m.onnx")):
            with pytest.raises(famix.IncompatibleError, match=f"weight {key} is now"):
                call()
        sd[key].data = original.clone()
        m.refresh()
        assert torch.equal(m.logits(exp["x"]), before)


def test_predictions_follow_in_place_edits_without_refresh_on_both_engines():
    """A weight edited in place through state_dict(), with no refresh(): the next
    logits equal those of a fresh model loaded with the edited weights (the torch
    engine's folded layers and ONNX Runtime's own graph are rebuilt; within TOL)."""
    exp = load_file(str(fixture("expected_seg.safetensors")))
    key = "classifier.classifier.3.bias"
    for engine in ("torch", "onnxruntime"):
        m = famix.Segmenter.load(fixture("seg_a_ref.pth"), engine=engine)
        assert m.engine == engine
        before = m.logits(exp["x"])
        with torch.no_grad():
            m.state_dict()[key][0] += 1.0
            m.state_dict()["backbone.layer1.0.bn1.running_mean"].mul_(0.5)
        fresh = famix.Segmenter.load(fixture("seg_a_ref.pth"))
        with torch.no_grad():
            for k, v in m.state_dict().items():
                fresh.state_dict()[k].copy_(v)
        after, want = m.logits(exp["x"]), fresh.logits(exp["x"])
        assert (after - want).abs().max().item() <= TOL, engine
        assert (after - before).abs().max().item() > 0.5, engine


def test_export_onnx_writes_a_model(tmp_path):
    m = famix.Segmenter.load(fixture("seg_a_ref.pth"))
    m.export_onnx(tmp_path / "m.onnx", height=64, width=96)
    data = (tmp_path / "m.onnx").read_bytes()
    assert len(data) > 10_000 and b"famix" in data


def test_onnxruntime_engine_gives_the_same_ids():
    img = np.asarray(Image.open(fixture("img_a.png")).convert("RGB"))
    a = famix.Segmenter.load(fixture("seg_a_ref.pth"))
    b = famix.Segmenter.load(fixture("seg_a_ref.pth"), engine="onnxruntime")
    assert b.engine == "onnxruntime"
    pa, pb = a.predict(img, logits=True), b.predict(img, logits=True)
    assert torch.equal(pa.train_ids, pb.train_ids)
    assert (pa.logits - pb.logits).abs().max().item() <= TOL
    # famix.clip.normalize is predict's own preprocessing: logits() of it are predict's.
    x = famix.clip.normalize(img)
    assert x.shape == (1, 3, *img.shape[:2]) and x.dtype == torch.float32
    want = (torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float() / 255 - torch.tensor(famix.clip.MEAN).view(1, 3, 1, 1)) \
        / torch.tensor(famix.clip.STD).view(1, 3, 1, 1)
    assert (x - want).abs().max().item() <= 1e-6
    assert torch.equal(a.logits(x).reshape(pa.logits.shape), pa.logits)
    with pytest.raises(famix.InvalidInputError, match="^images: expected uint8"):
        famix.clip.normalize(img.astype(np.float32))
    # colorize takes numpy ids as predict takes numpy images.
    assert torch.equal(a.colorize(pa.train_ids.numpy()), a.colorize(pa.train_ids))


def test_int8_predicts_through_a_calibration_of_the_command(tmp_path):
    # `famix calibrate` writes the ranges; int8 then agrees with fp32 on >= 90 % of the
    # pixels of the reference fixture (its random-weight head has small margins; the
    # trained demo model's agreement is in README) and survives refresh().
    ckpt, img = fixture("seg_a_ref.pth"), fixture("img_a.png")
    cal = tmp_path / "int8.json"
    r = famix_cli("calibrate", "--checkpoint", ckpt, "--images", img, "--out", cal)
    assert r.returncode == 0, r.stderr
    rgb = np.asarray(Image.open(img).convert("RGB"))
    ref = famix.Segmenter.load(ckpt).predict(rgb)
    with pytest.raises(famix.InvalidSettingError):
        famix.Segmenter.load(ckpt, int8=cal)
    m = famix.Segmenter.load(ckpt, engine="onnxruntime", int8=cal)
    assert m.engine == "onnxruntime-int8"
    ids = m.predict(rgb)
    assert ids.shape == ref.shape and (ids == ref).double().mean().item() >= 0.90
    m.refresh()
    assert torch.equal(m.predict(rgb), ids)
    # logits() answers from the same (int8) graph as predict(), not from libtorch's fp32.
    x = famix.clip.normalize(rgb)
    int8_logits, fp32_logits = m.logits(x), famix.Segmenter.load(ckpt).logits(x)
    predicted = m.predict(rgb, logits=True).logits
    assert torch.equal(int8_logits.reshape(predicted.shape), predicted)
    assert (fp32_logits.reshape(predicted.shape) - predicted).abs().max().item() > 1e-3, "int8 differs from fp32"


def test_clip_matches_pytorch():
    exp = load_file(str(fixture("expected_clip.safetensors")))
    texts = ["a photo of a cat", "Ethereal Mist style road", "photo", ""]
    tokens = famix.clip.tokenize(texts)
    assert torch.equal(tokens, exp["clip_a.text_tokens"])
    c = famix.clip.load(fixture("clip_a.safetensors.gz"))
    e = c.encode_text(texts)
    assert (e - exp["clip_a.text_embedding"]).abs().max().item() <= 1e-5
    assert c.encode_image(torch.zeros(2, 3, c.input_resolution, c.input_resolution)).shape == (2, e.shape[1])
    with pytest.raises(famix.InvalidInputError, match="^images: "):
        c.encode_image(torch.zeros(()))  # a scalar: refused, not a panic


def test_bad_inputs_are_typed_input_errors(tmp_path):
    """A missing file, a folder, a tiny image, an over-long text, a float image, a
    segmenter given as a CLIP: each an InvalidInputError that says what to do."""
    seg = fixture("seg_a_ref.pth")
    m = famix.Segmenter.load(seg)
    with pytest.raises(famix.InvalidInputError, match="nope.pt not found"):
        famix.clip.load(tmp_path / "nope.pt")
    run = tmp_path / "run"
    run.mkdir()
    (run / "latest.safetensors").write_bytes(b"x")
    with pytest.raises(famix.InvalidInputError, match="is a folder, not a checkpoint file .*latest.safetensors"):
        famix.Segmenter.load(run)
    with pytest.raises(famix.InvalidInputError, match="too small"):
        m.predict(np.zeros((8, 8, 3), np.uint8))
    # logits() of a tensor too small for the network: checked, not a libtorch panic that
    # poisons the model.
    with pytest.raises(famix.InvalidInputError, match="too small"):
        m.logits(torch.zeros(1, 3, 4, 4))
    assert m.predict(np.zeros((64, 64, 3), np.uint8)).shape == (64, 64)
    with pytest.raises(famix.InvalidInputError, match="^text is 202 tokens long, the context is 77"):
        famix.clip.tokenize("a " * 200)
    with pytest.raises(famix.InvalidInputError, match="^image: expected uint8"):
        m.predict(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(famix.InvalidInputError, match="load it as a segmenter"):
        famix.clip.load(seg)
    # Token ids outside the vocabulary reach libtorch's embedding only through a check.
    clip = famix.clip.load(fixture("clip_a_state.pt.gz"))
    for bad in (10**7, -1):
        with pytest.raises(famix.InvalidInputError, match="token ids must be in 0"):
            clip.encode_text(torch.full((1, clip.context_length), bad, dtype=torch.int64))
    # CLIP's logit scale as CLIP and open_clip store it (the logarithm).
    assert abs(famix.clip.load(fixture("clip_a_state.pt.gz")).logit_scale - np.log(12.182493960703473)) < 1e-9


def test_a_segmenter_is_made_from_a_path_as_load_does():
    a = famix.Segmenter(fixture("seg_a_ref.pth"), device="cpu")
    b = famix.Segmenter.load(fixture("seg_a_ref.pth"), device="cpu")
    img = np.asarray(Image.open(fixture("img_a.png")).convert("RGB"))
    assert torch.equal(a.predict(img), b.predict(img))
    with pytest.raises(TypeError, match="takes a checkpoint path"):
        famix.Segmenter(42)
