"""Shared fixtures: the repository's test fixtures and the `famix` command."""
import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "crates" / "famix-cli" / "tests" / "fixtures"
FAMIX = ROOT / "target" / "release" / "famix"


def fixture(name: str) -> pathlib.Path:
    return FIXTURES / name


def famix_cli(*args: str) -> subprocess.CompletedProcess:
    """Runs the `famix` command (built by `cargo build --release`)."""
    assert FAMIX.exists(), f"{FAMIX} is missing: run `cargo build --release` (make test does)"
    return subprocess.run([str(FAMIX), *map(str, args)], capture_output=True, text=True)


@pytest.fixture
def bank(tmp_path):
    """The reference's saved_params.pkl imported as a style bank."""
    out = tmp_path / "bank.safetensors"
    r = famix_cli("styles", "import", fixture("saved_params.pkl"), "--out", out)
    assert r.returncode == 0, r.stderr
    return out
