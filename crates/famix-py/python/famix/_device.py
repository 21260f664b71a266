"""Device arguments as PyTorch users pass them."""
from __future__ import annotations

from typing import Union

import torch

from . import _famix

DeviceLike = Union[str, torch.device]


def device_name(device: DeviceLike) -> str:
    """``"auto"`` (the first CUDA GPU if any, else the CPU, as the ``famix`` command's
    default), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a :class:`torch.device`."""
    if isinstance(device, torch.device):
        return str(device)
    if isinstance(device, str):
        return device
    raise _famix.InvalidSettingError(f"device: expected a string or a torch.device, got {type(device).__name__}")
