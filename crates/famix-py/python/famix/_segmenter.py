"""famix.Segmenter: load a checkpoint, segment images, export ONNX."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from . import _famix
from ._device import DeviceLike, device_name

ImageLike = Union[np.ndarray, torch.Tensor]
PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class Prediction:
    """What :meth:`Segmenter.predict` returns with ``logits=True``.

    Attributes:
        train_ids: int64 class ids, (H, W) for one image or (N, H, W) for a batch.
        logits: float32 class scores, (K, H, W) or (N, K, H, W), on the model's device.
    """

    train_ids: torch.Tensor
    logits: torch.Tensor


def _as_batch(image: ImageLike) -> Tuple[torch.Tensor, bool]:
    """uint8 RGB (H, W, 3) or (N, H, W, 3), numpy or torch → (N, 3, H, W) uint8 tensor."""
    if isinstance(image, np.ndarray):
        a = np.ascontiguousarray(image)
        # PIL's arrays are read-only, which torch.from_numpy warns about: copy those.
        t = torch.from_numpy(a if a.flags.writeable else a.copy())
    else:
        t = image
    if not isinstance(t, torch.Tensor):
        raise _famix.InvalidInputError(f"image: expected a numpy array or torch.Tensor, got {type(image).__name__}")
    if t.dtype != torch.uint8 or t.dim() not in (3, 4) or t.shape[-1] != 3:
        raise _famix.InvalidInputError(
            f"image: expected uint8 RGB (H, W, 3) or (N, H, W, 3), got {t.dtype} {tuple(t.shape)}")
    single = t.dim() == 3
    batch = t.unsqueeze(0) if single else t
    return batch.permute(0, 3, 1, 2).contiguous(), single


class Segmenter:
    """A FAMix segmenter (CLIP ResNet + DeepLabv3+), ready for inference.

    Load with :meth:`Segmenter.load` from a famix checkpoint (``.safetensors`` or its
    stem) or a reference FAMix ``.pth`` file; the architecture is inferred from the
    weights' shapes. ``Segmenter(path, **options)`` is the same as
    ``Segmenter.load(path, **options)``.
    """

    def __init__(self, native: Union["_famix.Segmenter", PathLike], **options):
        if isinstance(native, (str, os.PathLike)):
            native = Segmenter.load(native, **options)._m
        elif options:
            raise TypeError(f"options {sorted(options)} go with a checkpoint path")
        if not isinstance(native, _famix.Segmenter):
            raise TypeError(f"Segmenter takes a checkpoint path, got {type(native).__name__}")
        self._m = native

    @staticmethod
    def load(path: PathLike, device: DeviceLike = "auto", engine: str = "torch",
             output_stride: Optional[int] = None, int8: Optional[PathLike] = None) -> "Segmenter":
        """Loads a checkpoint.

        Args:
            path: famix checkpoint or reference FAMix ``.pth``.
            device: ``"auto"`` (the first CUDA GPU if any, else the CPU), ``"cpu"``,
                ``"cuda"``, ``"cuda:N"`` or a :class:`torch.device`.
            engine: ``"torch"`` (libtorch, every device and precision),
                ``"onnxruntime"`` (CPU fp32: famix's own ONNX graph in ONNX Runtime,
                built at the first call; needs ``make setup``'s ONNX Runtime) or
                ``"auto"`` (ONNX Runtime for fp32 on the CPU when installed).
            output_stride: 8, 16 or 32 instead of the checkpoint's.
            int8: a calibration file (``famix calibrate``): int8 convolutions on ONNX
                Runtime (CPU; needs ``engine="onnxruntime"`` or ``"auto"``), faster
                and not exact.

        Raises:
            InvalidInputError: the file is missing or unreadable.
            IncompatibleError: the weights do not form a famix segmenter.
        """
        cal = None if int8 is None else os.fspath(int8)
        return Segmenter(_famix.Segmenter.load(os.fspath(path), device_name(device), engine, output_stride, cal))

    def predict(self, image: ImageLike, logits: bool = False, scale: float = 1.0,
                ensemble: bool = False, amp: str = "fp32") -> Union[torch.Tensor, Prediction]:
        """Segments uint8 RGB images.

        Args:
            image: (H, W, 3) or a batch (N, H, W, 3) of uint8 RGB, numpy or torch
                (e.g. ``np.asarray(PIL.Image.open(p).convert("RGB"))``).
            logits: also return the class scores (a :class:`Prediction`).
            scale: test scale (the image is resized by it, the scores back).
            ensemble: average the scores of scale 1 and ``scale``.
            amp: ``"fp32"`` or ``"bf16"`` (autocast; libtorch engine).

        Returns:
            int64 train ids (H, W) or (N, H, W) — the ids ``famix predict`` writes —
            or a :class:`Prediction` with ``logits=True``.
        """
        batch, single = _as_batch(image)
        ids, scores = self._m.predict_batch(batch, scale, ensemble, amp, logits)
        if single:
            ids = ids[0]
            scores = scores[0] if scores is not None else None
        return Prediction(ids, scores) if logits else ids

    def logits(self, x: torch.Tensor, scale: float = 1.0, ensemble: bool = False) -> torch.Tensor:
        """Class scores (N, K, H, W) of normalised float images (N, 3, H, W) (RGB in
        [0, 1], minus CLIP's mean, over its std), computed by the model's engine, as
        :meth:`predict` computes them."""
        return self._m.logits(x, scale, ensemble)

    def colorize(self, train_ids: ImageLike) -> torch.Tensor:
        """The palette's colours of train ids (a tensor or a numpy array): (..., 3) uint8
        (ids outside the classes: black)."""
        k = len(self.palette)
        palette = torch.tensor(self.palette + [[0, 0, 0]], dtype=torch.uint8)
        ids = torch.as_tensor(train_ids).cpu().long()
        return palette[torch.where((ids >= 0) & (ids < k), ids, k)]

    @property
    def classes(self) -> List[str]:
        """Class names, by train id."""
        return self._m.classes

    @property
    def palette(self) -> List[List[int]]:
        """RGB colour of each class."""
        return [list(c) for c in self._m.palette]

    @property
    def output_stride(self) -> int:
        """The backbone's output stride (8, 16 or 32)."""
        return self._m.output_stride

    @property
    def device(self) -> str:
        """Where the weights live."""
        return self._m.device

    @property
    def engine(self) -> str:
        """The engine inference runs on (``"torch"``, ``"onnxruntime"`` or, loaded with ``int8=``, ``"onnxruntime-int8"``)."""
        return self._m.engine

    def state_dict(self) -> Dict[str, torch.Tensor]:
        """Parameters and batch-norm buffers by name (the reference's names), sharing
        storage with the model (no copy). After an in-place change the libtorch
        engine answers from the new values at once (the changed layers leave the
        fused fast path); :meth:`refresh` restores the fast path and, for the ONNX
        Runtime engine, rebuilds its graph."""
        return self._m.state_dict()

    def refresh(self) -> None:
        """Not needed for correct answers: every prediction follows the current weights
        (changed layers run unfused from their new weights; the ONNX Runtime engine
        rebuilds its graph at the next call after a change). ``refresh()`` does that
        work now — folds the batch norms in again for the fast path and rebuilds the
        engine — and checks the weights' shapes (IncompatibleError naming the first
        weight that no longer fits)."""
        self._m.refresh()

    def export_onnx(self, path: PathLike, opset: int = 17, height: Optional[int] = None,
                    width: Optional[int] = None, output: str = "logits",
                    include_preprocessing: bool = False) -> None:
        """Writes the model as ONNX (as ``famix export``): batch norms folded, dynamic
        batch and size unless ``height``/``width`` fix them; ``output`` is
        ``"logits"`` or ``"trainid"``; ``include_preprocessing`` takes uint8 RGB
        (N, H, W, 3)."""
        self._m.export_onnx(os.fspath(path), opset, height, width, output, include_preprocessing)

    def __repr__(self) -> str:
        return repr(self._m)
