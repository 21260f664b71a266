"""famix.train, famix.evaluate, famix.StyleBank: long work with progress and Ctrl-C."""
from __future__ import annotations

import json
import math
import os
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch

from . import _famix
from ._device import DeviceLike, device_name

PathLike = Union[str, "os.PathLike[str]"]


def _counts(**values: Optional[int]) -> None:
    """Refuses a count that is not a whole number ≥ 0 by its keyword, as the library
    refuses its settings (``InvalidSettingError``), before the native call would raise
    a bare ``OverflowError``/``TypeError``."""
    for name, v in values.items():
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise _famix.InvalidSettingError(f"{name}: expected a whole number ≥ 0, got {v!r}")
#: A progress callable receives one dict per event: ``{"event": "start", "task",
#: "total", "position", "unit"}``, ``{"event": "advance", "n"}``, ``{"event":
#: "status", "text"}``, ``{"event": "notice", "text"}``, ``{"event": "finish"}``, and
#: from training ``{"event": "metrics", "iter", ...numbers}``: ``loss``, ``lr_head``,
#: ``lr_backbone``, ``images_per_s`` at each log line, ``val_miou`` at each validation,
#: ``<name>_miou`` for each monitored set.
ProgressFn = Callable[[Dict[str, Any]], None]


class _Tqdm:
    """The default progress: a tqdm bar per task, notices written above it."""

    def __init__(self) -> None:
        from tqdm.auto import tqdm

        self._tqdm, self._bar = tqdm, None

    def __call__(self, e: Dict[str, Any]) -> None:
        kind = e["event"]
        if kind == "start":
            self._close()
            self._bar = self._tqdm(total=e["total"], initial=e["position"], desc=e["task"],
                                   unit="B" if e["unit"] == "bytes" else "it", unit_scale=e["unit"] == "bytes")
        elif kind == "advance" and self._bar is not None:
            self._bar.update(e["n"])
        elif kind == "status" and self._bar is not None:
            self._bar.set_postfix_str(e["text"], refresh=False)
        elif kind == "notice":
            self._tqdm.write(e["text"])
        elif kind == "finish":
            self._close()

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _progress(progress: Union[None, bool, ProgressFn]) -> Optional[ProgressFn]:
    """None: a tqdm bar when tqdm is installed; False: nothing; else the callable."""
    if progress is False:
        return None
    if progress is None or progress is True:
        try:
            return _Tqdm()
        except ImportError:
            return None
    return progress


def _fspath(p: Optional[PathLike]) -> Optional[str]:
    return None if p is None else os.fspath(p)


def _plain(v: Any) -> Any:
    """Settings as JSON takes them: paths as strings, in dicts and lists too."""
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def train(out: Optional[PathLike] = None, *, clip: Optional[PathLike] = None, dataset: Optional[str] = None,
          data_root: Optional[PathLike] = None, styles: Optional[PathLike] = None,
          resume: Optional[PathLike] = None, force: bool = False, device: DeviceLike = "auto",
          workers: Optional[int] = None, stop_after: Optional[int] = None, skip_bad: bool = False,
          tensorboard: Optional[PathLike] = None, no_fold: bool = False, reset_optimizer: bool = False,
          from_best: bool = False, progress: Union[None, bool, ProgressFn] = None, **settings: Any) -> Dict[str, Any]:
    for k, v in settings.items():
        if isinstance(v, float) and not math.isfinite(v):
            # JSON has no NaN or infinity: refused here, by name.
            raise _famix.InvalidSettingError(f"{k}: {v} is not a finite number")
    return json.loads(_famix.train(
        json.dumps(_plain(settings)), _progress(progress), _fspath(clip), dataset, _fspath(data_root), _fspath(styles),
        _fspath(out), _fspath(resume), force, device_name(device), workers, stop_after, skip_bad, _fspath(tensorboard), no_fold,
        reset_optimizer, from_best))


_NAMED = ("clip", "dataset", "data_root", "styles")


def _setting_lines() -> str:
    """One line per training setting, from the library's declarations."""
    lines = []
    for s in _famix.train_settings():
        if s["name"] in _NAMED:
            continue
        doc = s["doc"].replace("`", "``")
        if s["type"] == "switch":
            default = " Default False."
        elif s["default"] is not None:
            default = f" Default {s['default']}."
        else:
            default = ""
        lines.append(f"        {s['name']}: {doc}.{default}")
    return "\n".join(lines)


def _train_doc() -> str:
    return f"""Trains a FAMix segmenter (as ``famix train``), or resumes a run.

    A new run: ``train(out, clip=..., dataset=..., data_root=..., styles=...,
    **settings)``; a run folder holds config.json, train_log.jsonl and latest/best
    checkpoints. ``resume=RUN_DIR`` continues one from its latest checkpoint, bit-exact
    (its settings come from its config.json; only ``iters`` may extend it).

    Ctrl-C (``KeyboardInterrupt``) stops at the next iteration after writing a
    checkpoint, then raises ``KeyboardInterrupt``: resume later. An exception raised by
    the ``progress`` callable stops it the same way and is re-raised.

    Args:
        out: the new run's folder (refused when it holds a run, unless ``force``).
        clip: CLIP checkpoint whose image tower initialises the backbone.
        dataset: source dataset layout ({', '.join(_DATASETS)}).
        data_root: its root folder.
        styles: style bank from ``famix mine-styles`` (needed unless ``no_styles`` or
            ``random_styles``).
        resume: a run folder to continue.
        device: ``"auto"`` (the first CUDA GPU if any, else the CPU), ``"cpu"``,
            ``"cuda[:N]"`` or a :class:`torch.device`.
        workers, stop_after, skip_bad, tensorboard, no_fold, reset_optimizer,
            from_best: as ``famix train``'s flags of the same names. A resume whose
            folder shows a committed checkpoint but lost its latest one is
            refused; ``from_best=True`` continues from the best checkpoint,
            ``force=True`` starts the run over with its saved settings.
        progress: None (a tqdm bar when tqdm is installed), False, or a callable
            taking one dict per event (see ``famix._jobs.ProgressFn``).
        **settings: the training settings (``famix train``'s flags, with
            underscores); ``monitor`` takes a dict, e.g. ``{{"dusk": {{"dataset":
            "folder", "data_root": "data/dusk"}}}}`` (``split`` 'val' unless given).

{_setting_lines()}

    Returns:
        The run's summary: steps, last_loss, best_miou, last_miou, run_dir.

    Raises:
        InvalidSettingError: an unknown or out-of-range setting.
        InvalidInputError: missing CLIP file, dataset or bank.
        IncompatibleError: a bank or checkpoint that does not fit the run.
        BusyError: another process is writing the run folder.
        NonFiniteError: the loss diverged.
        KeyboardInterrupt: Ctrl-C (the run folder is resumable).
    """


_DATASETS = _famix.choices("dataset")
train.__doc__ = _train_doc()


def mine_styles(out: PathLike, *, clip: PathLike, dataset: str, data_root: PathLike, split: str = "train",
                condition: Optional[str] = None, batch: Optional[int] = None, crop: Optional[int] = None,
                iters: Optional[int] = None, lr: Optional[float] = None, grid: Optional[int] = None,
                seed: Optional[int] = None, passes: Optional[int] = None, limit: Optional[int] = None,
                styles: Optional[PathLike] = None, prompt: Optional[str] = None, group: Optional[int] = None,
                save_every: Optional[int] = None,
                resume: bool = False, force: bool = False, shard: Optional[str] = None, deterministic: bool = False,
                no_tf32: bool = False, device: DeviceLike = "auto", workers: Optional[int] = None, skip_bad: bool = False,
                classes: Optional[PathLike] = None, progress: Union[None, bool, ProgressFn] = None) -> "StyleBank":
    _counts(batch=batch, crop=crop, iters=iters, grid=grid, seed=seed, passes=passes, limit=limit, group=group,
            save_every=save_every, workers=workers)
    return StyleBank(_famix.mine_styles(
        os.fspath(out), os.fspath(clip), dataset, os.fspath(data_root), _progress(progress), split, condition, batch,
        crop, iters, lr, grid, seed, passes, limit, _fspath(styles), prompt, group, save_every, resume, force, shard,
        deterministic, no_tf32, device_name(device), workers, skip_bad, _fspath(classes)))


def _mine_doc() -> str:
    d = _famix.mine_defaults()
    return f"""Mines a style bank with CLIP (as ``famix mine-styles``): per batch of source
    crops, one patch per dominant class, a prompt per patch, patch-wise PIN; the learnt
    (μ, σ) go into the bank at ``out``, saved every ``save_every`` batches.

    Ctrl-C (``KeyboardInterrupt``) stops after the current batch with the bank saved:
    continue with ``resume=True``.

    Args:
        out: the bank to write (refused when it exists, unless ``resume`` or ``force``).
        clip: CLIP checkpoint with its text tower.
        dataset: source layout ({', '.join(_DATASETS)}); data_root: its root; split,
            condition: as ``famix mine-styles``.
        batch={d['batch']}, crop={d['crop']}, seed={d['seed']}, group={d['group']},
            save_every={d['save_every']}: crops per batch, their size, the seed,
            batches per launch, save interval.
        iters={d['iters']}, lr={d['lr']}, grid={d['grid']}: PIN's iterations,
            learning rate, patches per side.
        passes={d['passes']}: passes over the dataset, each with a new order and new
            random crops (more give a small dataset's rare classes more chances to
            dominate a patch).
        limit: mine at most this many batches (default: every batch of ``passes``).
        styles: a prompt vocabulary file; prompt: one target description instead of
            random styles.
        shard: ``"I/N"``, part I of an N-way split (merge with :meth:`StyleBank.merge`).
        classes: a class file (the classes to mine for and their prompt words;
            default: Cityscapes' 19 classes); the bank records it.
        deterministic, no_tf32, device, workers, skip_bad: as the flags.
        progress: None (tqdm when installed), False, or a callable (see :func:`train`).

    Returns:
        The finished :class:`StyleBank`.
    """


mine_styles.__doc__ = _mine_doc()


def evaluate(model: "Any", dataset: str, data_root: PathLike, *, split: str = "val",
             condition: Optional[str] = None, scale: float = 1.0, ensemble: bool = False, amp: str = "fp32",
             skip_bad: bool = False, limit: Optional[int] = None, device: DeviceLike = "auto",
             classes: Optional[PathLike] = None, progress: Union[None, bool, ProgressFn] = None) -> Dict[str, Any]:
    """Evaluates a segmenter on a dataset split (as ``famix eval``): the dataset's
    evaluation transform, a streaming confusion matrix.

    Args:
        model: a :class:`famix.Segmenter`, or a checkpoint path (loaded on ``device``).
        dataset: layout (gta5, synthia, cityscapes, bdd100k, mapillary, acdc, folder).
        data_root: its root folder.
        split: the split; condition: ACDC's (night, snow, rain, fog).
        scale, ensemble, amp: test-time options as ``famix eval``'s.
        skip_bad: skip (and report) unreadable samples instead of failing.
        limit: the first N images only.
        classes: the class file the model was trained with (labels are read with
            its encoding); one naming other classes is refused with
            ``IncompatibleError`` (default: the model's own classes).
        progress: None (tqdm when installed), False, or a callable (see :func:`train`).

    Returns:
        The keys of ``famix eval --json``: ``miou``, ``overall_acc``, ``mean_acc``
        (fractions in [0, 1]), ``per_class_iou`` and ``per_class_acc`` by class name
        (None for a class absent from both ground truth and prediction), ``pixels``,
        ``images``, ``skipped``, ``class_names``, ``confusion_matrix`` (K × K counts,
        row = ground truth).

    Ctrl-C stops it at the next image (``KeyboardInterrupt``).
    """
    from ._segmenter import Segmenter

    if not isinstance(model, Segmenter):
        model = Segmenter.load(model, device=device_name(device))
    _counts(limit=limit)
    return json.loads(_famix.evaluate(model._m, dataset, os.fspath(data_root), _progress(progress), split, condition,
                                      scale, ensemble, amp, skip_bad, limit, _fspath(classes)))


class StyleBank:
    """A style bank: per class, the (μ, σ) layer1 statistics mined by ``famix
    mine-styles``."""

    def __init__(self, native: "_famix.StyleBank"):
        self._b = native

    @staticmethod
    def load(path: PathLike) -> "StyleBank":
        """Reads a bank (checked: format, shapes, finite values)."""
        return StyleBank(_famix.StyleBank.load(os.fspath(path)))

    @staticmethod
    def merge(paths: List[PathLike]) -> "StyleBank":
        """Combines the parts of one sharded mining run (``mine-styles --shard``) into
        the bank the unsharded run writes; every part must be complete."""
        return StyleBank(_famix.StyleBank.merge([os.fspath(p) for p in paths]))

    def save(self, path: PathLike) -> None:
        """Writes the bank and its JSON summary atomically."""
        self._b.save(os.fspath(path))

    @property
    def classes(self) -> List[str]:
        """Class names, by train id."""
        return self._b.classes

    @property
    def channels(self) -> int:
        """Channels of each μ and σ (layer1's width)."""
        return self._b.channels

    def counts(self) -> Dict[int, int]:
        """Styles per class id."""
        return self._b.counts()

    def styles(self, class_id: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """A class's (μ, σ): two (count, channels) float32 tensors."""
        return self._b.styles(class_id)

    def summary(self) -> Dict[str, Any]:
        """Counts, settings, losses (the bank's JSON sidecar)."""
        return json.loads(self._b.summary())

    def __len__(self) -> int:
        return len(self._b)

    def __repr__(self) -> str:
        return f"famix.StyleBank({len(self)} styles, {len(self.classes)} classes, {self.channels} channels)"
