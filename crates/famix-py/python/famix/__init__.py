"""famix: FAMix (CVPR 2024) language-guided domain-generalised semantic segmentation,
from Python, on the same libtorch as PyTorch.

Tensors go both ways as ``torch.Tensor`` without copies (famix runs on the libtorch of
the PyTorch you import). Long work (training, evaluation) releases the GIL, reports
progress to a callable (or a tqdm bar), and stops cleanly on Ctrl-C at the next step,
leaving the run folder resumable. Errors are subclasses of :class:`famix.Error`.

Paper: https://arxiv.org/abs/2311.17922 — reference code:
https://github.com/astra-vision/FAMix — famix: see its README and docs/src/design.md.
"""
from __future__ import annotations

# The extension links libtorch: load PyTorch's copy first, so both share one.
import torch

from . import _famix
from ._famix import (
    BusyError,
    Error,
    IncompatibleError,
    InvalidInputError,
    InvalidSettingError,
    IoError,
    NonFiniteError,
    __version__,
)
from ._jobs import StyleBank, evaluate, mine_styles, train
from ._segmenter import Prediction, Segmenter
from . import clip

__all__ = [
    "Segmenter",
    "Prediction",
    "StyleBank",
    "train",
    "mine_styles",
    "evaluate",
    "clip",
    "Error",
    "InvalidInputError",
    "InvalidSettingError",
    "IncompatibleError",
    "NonFiniteError",
    "BusyError",
    "IoError",
    "__version__",
]
del torch
