"""famix.clip: CLIP models (OpenAI TorchScript, open_clip state dicts, safetensors) and
CLIP's BPE tokenizer, as famix reads them."""
from __future__ import annotations

import os
from typing import Optional, Sequence, Union

import numpy as np
import torch

from . import _famix
from ._device import DeviceLike, device_name

__all__ = ["Clip", "load", "tokenize", "normalize", "MEAN", "STD"]

#: CLIP's RGB normalisation mean (of images scaled to [0, 1]).
MEAN = tuple(_famix.CLIP_MEAN)
#: CLIP's RGB normalisation standard deviation.
STD = tuple(_famix.CLIP_STD)


def normalize(images) -> torch.Tensor:
    """uint8 RGB images — (H, W, 3) or (N, H, W, 3), numpy or torch, as
    :meth:`famix.Segmenter.predict` takes them — as the float (N, 3, H, W) batch that
    :meth:`famix.Segmenter.logits` and :meth:`Clip.encode_image` (after CLIP's resize
    and centre crop) expect: ``(x / 255 - MEAN) / STD``, with famix's own arithmetic."""
    x = torch.from_numpy(images.copy()) if isinstance(images, np.ndarray) and not images.flags.writeable else torch.as_tensor(images)
    if x.dim() == 3:
        x = x[None]
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[-1] != 3:
        raise _famix.InvalidInputError(f"images: expected uint8 (H, W, 3) or (N, H, W, 3), got {x.dtype} {tuple(x.shape)}")
    return _famix.normalize(x.permute(0, 3, 1, 2).contiguous())


class Clip:
    """A frozen CLIP ResNet model (image tower, and text tower when present)."""

    def __init__(self, native: "_famix.Clip"):
        self._m = native

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Image embeddings (N, D) of preprocessed images (N, 3, R, R), R =
        :attr:`input_resolution` (CLIP's resize, centre crop and normalisation)."""
        return self._m.encode_image(images)

    def encode_text(self, texts: Union[torch.Tensor, Sequence[str]]) -> torch.Tensor:
        """Text embeddings (N, D) of token rows (N, context) or of strings (tokenized
        with :func:`tokenize` at this model's context length)."""
        if not isinstance(texts, torch.Tensor):
            texts = tokenize(list(texts), self.context_length or 77)
        return self._m.encode_text(texts)

    @property
    def input_resolution(self) -> int:
        """The image tower's input size."""
        return self._m.input_resolution

    @property
    def context_length(self) -> Optional[int]:
        """The text tower's context length (None for image-only weights)."""
        return self._m.context_length

    @property
    def logit_scale(self) -> Optional[float]:
        """CLIP's learnt logit scale as CLIP and open_clip store it: the logarithm of the
        inverse temperature (logits are ``exp(logit_scale)`` times cosine similarities),
        when the checkpoint has it."""
        return self._m.logit_scale

    def __repr__(self) -> str:
        return repr(self._m)


def load(path: Union[str, "os.PathLike[str]"], device: DeviceLike = "auto") -> Clip:
    """Loads a CLIP checkpoint; the architecture is inferred from its shapes.

    Raises:
        InvalidInputError: missing/unreadable file, or no CLIP image tower in it.
        IncompatibleError: the weights do not form a CLIP ResNet.
    """
    return Clip(_famix.Clip.load(os.fspath(path), device_name(device)))


def tokenize(texts: Union[str, Sequence[str]], context_length: int = 77, truncate: bool = False) -> torch.Tensor:
    """CLIP's tokenizer: (N, context_length) int64 rows (start token, BPE ids, end token,
    zeros). Too long a text is an error unless ``truncate``."""
    if isinstance(texts, str):
        texts = [texts]
    return _famix.tokenize(list(texts), context_length, truncate)
