"""famix.train (progress, Ctrl-C, bit-exact resume), famix.evaluate against `famix eval`,
style banks, and one real bad input for every exception class."""
import fcntl
import json
import re
import os
import signal

import pytest
import torch
from safetensors.torch import load_file, save_file
from safetensors import safe_open

import famix
from conftest import famix_cli, fixture

# A few iterations on the mini GTA5 fixture (as the Rust tests' train_args).
SMALL = dict(iters=5, batch=2, crop=48, split="all", log_interval=2, val_interval=4)


def run(out, bank, **kw):
    return famix.train(out, clip=fixture("clip_a_state.pt.gz"), dataset="gta5", data_root=fixture("gta5_mini"),
                       styles=bank, workers=2, **{**SMALL, **kw})


def weights(run_dir):
    return famix.Segmenter.load(run_dir / "latest").state_dict()


def test_ctrl_c_stops_training_resumably_and_resume_is_bit_exact(tmp_path, bank):
    straight, split = tmp_path / "straight", tmp_path / "split"
    events = []
    summary = run(straight, bank, progress=events.append)
    assert summary["steps"] == 5
    assert [e["event"] for e in events][0] == "start" and sum(e.get("n", 0) for e in events) == 5
    # Numbers, not text: the loss and learning rates at every log line (2, 4 and the
    # last, 5), the validation mIoU at every validation — equal to the run's log.
    metrics = [e for e in events if e["event"] == "metrics"]
    losses = {e["iter"]: e["loss"] for e in metrics if "loss" in e}
    log = [json.loads(l) for l in (straight / "train_log.jsonl").read_text().splitlines()]
    assert losses == {l["iter"]: l["loss"] for l in log if "loss" in l} and sorted(losses) == [2, 4, 5]
    assert all(isinstance(e["lr_head"], float) and e["lr_backbone"] < e["lr_head"] for e in metrics if "loss" in e)
    assert [e["iter"] for e in metrics if "val_miou" in e] == [l["iter"] for l in log if "val_miou" in l]

    def interrupt_at_3(e):
        # A real SIGINT, as Ctrl-C sends it, delivered in the middle of the run.
        if e["event"] == "advance":
            interrupt_at_3.done += e["n"]
            if interrupt_at_3.done == 3:
                os.kill(os.getpid(), signal.SIGINT)
    interrupt_at_3.done = 0
    # Python's own SIGINT handler, as in an interactive session (a process started in
    # the background by a non-interactive shell begins with SIGINT ignored).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            run(split, bank, progress=interrupt_at_3)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert famix.Segmenter.load(split / "latest") is not None
    cfg = json.loads((split / "config.json").read_text())
    assert cfg["iters"] == 5
    resumed = famix.train(resume=split, progress=False)
    assert resumed["steps"] == 5
    a, b = weights(straight), weights(split)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after an interrupted and resumed run"


def test_a_resume_that_lost_its_latest_checkpoint_is_refused_and_continues_from_best(tmp_path, bank):
    r = tmp_path / "r"
    events = []
    run(r, bank, iters=2, val_interval=1, val_dataset="cityscapes", val_root=str(fixture("cityscapes_mini")), val_limit=1,
        progress=events.append)
    # The validation notice counts the images validated, as the log does (val_limit=1).
    notices = [e["text"] for e in events if e["event"] == "notice" and "val mIoU" in e["text"]]
    log = [json.loads(l) for l in (r / "train_log.jsonl").read_text().splitlines()]
    assert [l["val_images"] for l in log if "val_miou" in l] == [1, 1]
    assert len(notices) == 2 and all("(1 of its images)" in n for n in notices), notices
    (r / "latest.safetensors").unlink()
    with pytest.raises(famix.InvalidInputError, match="latest.safetensors is missing"):
        famix.train(resume=r, iters=3, progress=False)
    assert famix.train(resume=r, iters=3, from_best=True, progress=False)["steps"] == 3
    assert "from-best" in (r / "train_log.jsonl").read_text()
    with pytest.raises(famix.InvalidSettingError, match="from_best"):
        famix.train(resume=r, from_best=True, force=True, progress=False)


def test_random_styles_trains_without_a_bank_and_refuses_one(tmp_path, bank):
    with pytest.raises(famix.InvalidSettingError, match="random_styles"):
        run(tmp_path / "r", bank, random_styles=True, progress=False)
    summary = run(tmp_path / "r", None, random_styles=True, iters=2, val_interval=2, progress=False)
    assert summary["steps"] == 2
    assert json.loads((tmp_path / "r" / "config.json").read_text())["style_mode"] == "random-mix"


def test_a_failing_progress_callable_stops_the_run_and_is_reraised(tmp_path, bank):
    def boom(e):
        if e["event"] == "advance":
            raise RuntimeError("callback failed")
    with pytest.raises(RuntimeError, match="callback failed"):
        run(tmp_path / "r", bank, progress=boom)
    assert (tmp_path / "r" / "latest.safetensors").exists()


def test_evaluate_equals_the_command(tmp_path, bank):
    run(tmp_path / "r", bank, iters=2, progress=False)
    ckpt = tmp_path / "r" / "latest.safetensors"
    r = famix_cli("eval", "--checkpoint", ckpt, "--dataset", "cityscapes", "--data-root", fixture("cityscapes_mini"),
                  "--device", "cpu", "--json", tmp_path / "eval.json")
    assert r.returncode == 0, r.stderr
    want = json.loads((tmp_path / "eval.json").read_text())
    got = famix.evaluate(ckpt, "cityscapes", fixture("cityscapes_mini"), progress=False)
    for key in ("miou", "overall_acc", "mean_acc", "per_class_iou", "images", "class_names", "confusion_matrix"):
        assert got[key] == want[key], key  # exactly: the same library code on the same data
    assert got["images"] > 0


def test_mine_styles_equals_the_command(tmp_path):
    args = dict(clip=fixture("clip_a.safetensors.gz"), dataset="gta5", data_root=fixture("gta5_mini"), split="all",
                crop=72, batch=2, iters=3, limit=2, workers=2)
    r = famix_cli("mine-styles", "--out", tmp_path / "cli.safetensors", "--device", "cpu",
                  *[x for k, v in args.items() for x in (f"--{k.replace('_', '-')}", v)])
    assert r.returncode == 0, r.stderr
    events = []
    got = famix.mine_styles(tmp_path / "py.safetensors", progress=events.append, **args)
    want = famix.StyleBank.load(tmp_path / "cli.safetensors")
    assert got.counts() == want.counts() and len(got) > 0
    for c in want.counts():
        for a, b in zip(got.styles(c), want.styles(c)):
            assert torch.equal(a, b), f"class {c}"  # same library code, same seed: identical
    assert sum(e.get("n", 0) for e in events) == 2
    with pytest.raises(famix.InvalidSettingError, match="exists"):
        famix.mine_styles(tmp_path / "py.safetensors", progress=False, **args)


def test_bad_counts_class_ids_and_folders_are_typed_errors_naming_the_argument(tmp_path, bank):
    """Negative counts, a class id outside 0..255 and a folder given as the file to
    write: typed famix errors naming the keyword, not OverflowError or an OS error."""
    m = famix.Segmenter.load(fixture("seg_a_ref.pth"))
    with pytest.raises(famix.InvalidSettingError, match="^limit: expected a whole number"):
        famix.evaluate(m, dataset="cityscapes", data_root=fixture("cityscapes_mini"), limit=-1, progress=False)
    with pytest.raises(famix.InvalidSettingError, match="^batch: expected a whole number"):
        famix.mine_styles(tmp_path / "b.safetensors", clip=fixture("clip_a.safetensors.gz"), dataset="gta5",
                          data_root=fixture("gta5_mini"), batch=-2, progress=False)
    for passes, message in ((-1, "expected a whole number"), (0, "must be at least 1")):
        with pytest.raises(famix.InvalidSettingError, match=f"^passes: {message}"):
            famix.mine_styles(tmp_path / "b.safetensors", clip=fixture("clip_a.safetensors.gz"), dataset="gta5",
                              data_root=fixture("gta5_mini"), passes=passes, progress=False)
    b = famix.StyleBank.load(bank)
    for bad in (999, -1):
        with pytest.raises(famix.InvalidSettingError, match="^class_id: the bank has no styles"):
            b.styles(bad)
    with pytest.raises(famix.InvalidInputError, match="is a folder"):
        m.export_onnx(tmp_path)
    with pytest.raises(famix.InvalidInputError, match="is a folder"):
        b.save(tmp_path)


def _flags(command):
    """The flags `famix COMMAND --help` lists, as keyword spellings."""
    r = famix_cli(command, "--help")
    assert r.returncode == 0, r.stderr
    flags = re.findall(r"^\s+(?:-\w, )?--([a-z0-9-]+)", r.stdout, re.M)
    return {f.replace("-", "_") for f in flags} - {"help"}


def test_mine_styles_takes_the_command_s_settings_by_the_same_names():
    """Every `famix mine-styles` flag is a `famix.mine_styles` keyword and the reverse,
    except the command's `--shards` (the Kubernetes shard count of `--shard auto`) and
    Python's `progress` and positional `out` (the command's `--out`)."""
    import inspect
    keywords = set(inspect.signature(famix.mine_styles).parameters) - {"progress"}
    assert keywords == _flags("mine-styles") - {"shards"}, keywords ^ (_flags("mine-styles") - {"shards"})


def test_style_bank(bank):
    b = famix.StyleBank.load(bank)
    counts = b.counts()
    assert len(b) == sum(counts.values()) > 0
    cls = next(iter(counts))
    mu, sigma = b.styles(cls)
    assert mu.shape == sigma.shape == (counts[cls], b.channels) and bool((sigma > 0).all())


def test_invalid_input_error():
    with pytest.raises(famix.InvalidInputError, match="nonexistent"):
        famix.Segmenter.load("/nonexistent/model.safetensors")


def test_invalid_setting_error(tmp_path, bank):
    m = famix.Segmenter.load(fixture("seg_a_ref.pth"))
    with pytest.raises(famix.InvalidSettingError, match="amp"):
        m.predict(torch.zeros(8, 8, 3, dtype=torch.uint8), amp="fp16")
    with pytest.raises(famix.InvalidSettingError, match="batch"):
        run(tmp_path / "r", bank, batch=1, progress=False)
    with pytest.raises(famix.InvalidSettingError, match="unknown setting"):
        run(tmp_path / "r", bank, learning_rate=0.1, progress=False)
    with pytest.raises(famix.InvalidSettingError, match="^lr: nan is not a finite number"):
        run(tmp_path / "r", bank, lr=float("nan"), progress=False)
    with pytest.raises(famix.InvalidSettingError, match="^batch: expected a whole number"):
        run(tmp_path / "r", bank, batch=2.5, progress=False)
    with pytest.raises(famix.InvalidSettingError, match="^iters: expected a whole number"):
        run(tmp_path / "r", bank, iters=-1, progress=False)
    with pytest.raises(famix.InvalidSettingError, match="^iters: 0 trains nothing"):
        run(tmp_path / "r", bank, iters=0, progress=False)
    assert not (tmp_path / "r").exists(), "a refused run wrote files"
    # A resumed run keeps its settings and data, as `famix train --resume` does.
    with pytest.raises(famix.InvalidSettingError, match="styles: cannot change when resuming"):
        famix.train(resume=tmp_path / "r", styles=bank, progress=False)


def _sample(s):
    """A value of the right type for a declared setting."""
    return {"switch": True, "count": 16, "int": 16, "real": 0.5, "text": "x", "path": "x",
            "choice": (s["choices"] or ["x"])[0], "sets": {"dusk": {"dataset": "folder", "data_root": "d"}}}[s["type"]]


def test_keywords_defaults_and_resume_rules_are_the_library_declarations(tmp_path, bank):
    """Every declared training setting is a keyword of famix.train, documented with its
    declared default; resuming refuses each one the library declares fixed (all but
    iters), naming the keyword, and lets iters extend the run."""
    declared = famix._famix.train_settings()
    assert len(declared) >= 38
    doc = famix.train.__doc__
    for s in declared:
        if s["name"] in ("clip", "dataset", "data_root", "styles"):
            assert f"{s['name']}:" in doc
            continue
        line = next((l.strip() for l in doc.splitlines() if l.strip().startswith(s["name"] + ":")), None)
        assert line is not None, f"{s['name']} is not documented"
        want = "Default False." if s["type"] == "switch" else (f"Default {s['default']}." if s["default"] is not None else None)
        assert want is None or line.endswith(want), f"{line!r} should end with {want!r}"
    r = tmp_path / "r"
    run(r, bank, iters=1, val_interval=1, progress=False)
    for s in declared:
        if s["name"] == "iters":
            continue
        with pytest.raises(famix.InvalidSettingError, match=f"^{s['name']}: cannot change when resuming"):
            famix.train(resume=r, progress=False, **{s["name"]: _sample(s)})
    assert famix.train(resume=r, iters=2, progress=False)["steps"] == 2


def _edited_checkpoint(tmp_path, edit):
    """A famix checkpoint written by a 1-iteration run, with `edit` applied to its tensors."""
    with safe_open(str(_tiny_checkpoint(tmp_path / "tiny")), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    key = sorted(k for k in tensors if k.endswith("conv1.weight"))[0]
    edit(tensors, key)
    out = tmp_path / "edited.safetensors"
    save_file(tensors, str(out), metadata=meta)
    return out, key


def test_incompatible_error(tmp_path):
    """A checkpoint missing a weight is refused, naming the key."""
    bad, key = _edited_checkpoint(tmp_path, lambda t, k: t.pop(k))
    with pytest.raises(famix.IncompatibleError, match=key.replace(".", r"\.")):
        famix.Segmenter.load(bad)


def test_non_finite_error(tmp_path):
    """A checkpoint with one NaN weight is refused."""
    def nan(t, k):
        t[k].view(-1)[0] = float("nan")
    bad, _ = _edited_checkpoint(tmp_path, nan)
    with pytest.raises(famix.NonFiniteError, match="edited.safetensors"):
        famix.Segmenter.load(bad)


def _tiny_checkpoint(path):
    """A small famix checkpoint: a 1-iteration run's latest.safetensors."""
    bank = path.parent / "tiny_bank.safetensors"
    assert famix_cli("styles", "import", fixture("saved_params.pkl"), "--out", bank).returncode == 0
    run(path, bank, iters=1, val_interval=1, progress=False)
    return path / "latest.safetensors"


def test_busy_error(tmp_path, bank):
    out = tmp_path / "r"
    out.mkdir()
    with open(out / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another writer holds the run
        with pytest.raises(famix.BusyError):
            run(out, bank, progress=False)


def test_io_error(tmp_path):
    m = famix.Segmenter.load(fixture("seg_a_ref.pth"))
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(famix.IoError):
        m.export_onnx(blocker / "m.onnx")


def test_every_error_is_a_famix_error():
    for cls in (famix.InvalidInputError, famix.InvalidSettingError, famix.IncompatibleError, famix.NonFiniteError,
                famix.BusyError, famix.IoError):
        assert issubclass(cls, famix.Error) and issubclass(famix.Error, Exception)


CITYSCAPES = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
              "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]


def _class_file(path, road_prompt):
    classes = [{"name": n, "color": [i, 10, 20]} for i, n in enumerate(CITYSCAPES)]
    if road_prompt:
        classes[0]["prompt"] = road_prompt
    path.write_text(json.dumps({"classes": classes, "unknown": "ignore"}))
    return path


def test_a_class_file_travels_with_the_model_and_refuses_others(tmp_path, bank):
    mine = _class_file(tmp_path / "mine.json", "paved road")
    with pytest.raises(famix.InvalidSettingError, match="num_classes"):
        run(tmp_path / "r0", None, no_styles=True, classes=str(mine), num_classes=19, progress=False)
    with pytest.raises(famix.IncompatibleError, match="mined for other classes"):
        run(tmp_path / "r1", bank, classes=str(mine), iters=1, progress=False)
    run(tmp_path / "r2", None, no_styles=True, classes=str(mine), iters=1, val_interval=1, progress=False)
    ckpt = tmp_path / "r2" / "latest.safetensors"
    m = famix.Segmenter.load(ckpt)
    assert m.classes == CITYSCAPES and list(m.palette[3]) == [3, 10, 20]
    other = _class_file(tmp_path / "other.json", None)
    with pytest.raises(famix.IncompatibleError, match="class 0 \\(road\\) has prompt"):
        famix.evaluate(m, "cityscapes", fixture("cityscapes_mini"), classes=other, progress=False)
    got = famix.evaluate(m, "cityscapes", fixture("cityscapes_mini"), classes=mine, progress=False)
    assert got["class_names"] == CITYSCAPES and got["images"] > 0


def test_a_bad_training_setting_is_named(tmp_path, bank):
    with pytest.raises(famix.InvalidSettingError, match="^iters: .*-1"):
        run(tmp_path / "r", bank, iters=-1, progress=False)
    with pytest.raises(famix.InvalidSettingError, match="^iters: 0 trains nothing"):
        run(tmp_path / "r", bank, iters=0, progress=False)
    assert not (tmp_path / "r" / "latest.safetensors").exists()
    # Range checks name the keyword, never a command-line flag.
    for kw, value in [("lr", -1.0), ("backbone_lr_mult", -1.0), ("crop", 30), ("batch", 1), ("grid", 0)]:
        with pytest.raises(famix.InvalidSettingError, match=f"^{kw}: ") as e:
            run(tmp_path / "r", bank, progress=False, **{kw: value})
        assert "--" not in str(e.value).split(":")[0], e.value
    with pytest.raises(famix.InvalidSettingError, match="^device: "):
        run(tmp_path / "r", bank, progress=False, device="tpu")
    with pytest.raises(famix.InvalidSettingError, match="^device: expected a string or a torch.device"):
        run(tmp_path / "r", bank, progress=False, device=0)


def test_devices_are_auto_by_default_and_torch_devices_are_accepted(tmp_path):
    import inspect
    for f in (famix.train, famix.mine_styles, famix.evaluate, famix.Segmenter.load, famix.clip.load):
        assert inspect.signature(f).parameters["device"].default == "auto", f
    m = famix.Segmenter.load(fixture("seg_a_ref.pth"), device=torch.device("cpu"))
    assert m.device == "cpu"
    assert famix.clip.load(fixture("clip_a_state.pt.gz"), device=torch.device("cpu")) is not None
