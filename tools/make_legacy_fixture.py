"""Writes the same small state dict twice with PyTorch itself: in the legacy (pre-1.6,
non-zip) torch.save format and in the zip format, so tests can check that famix reads
legacy files exactly like zip ones. Run: .venv/bin/python tools/make_legacy_fixture.py
"""
import collections
import os

import torch

here = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")
torch.manual_seed(0)
base = torch.randn(4, 6)
sd = collections.OrderedDict(
    [
        ("layer.weight", torch.randn(3, 4)),
        ("layer.bias", torch.arange(3, dtype=torch.float64)),
        ("layer.half", torch.randn(2, 2).half()),
        ("counts", torch.tensor([1, 2, 3], dtype=torch.int64)),
        # A strided view sharing its storage with the next entry.
        ("view", base[:, 1:3]),
        ("base", base),
    ]
)
torch.save(sd, os.path.join(here, "legacy_state.pth"), _use_new_zipfile_serialization=False)
torch.save(sd, os.path.join(here, "zip_state.pth"))
print("wrote legacy_state.pth and zip_state.pth")
