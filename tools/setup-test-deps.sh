#!/usr/bin/env bash
# What the test suite needs besides libtorch, installed when missing:
#   chromium (Debian package) — tests/serve.rs and tests/report.rs render famix's pages
#     in headless Chromium;
#   ffmpeg (Debian package) — tests/video.rs makes and reads videos;
#   tools/requirements-test.txt (PyPI, exact versions, into the project venv) — the real
#     clients famix is checked against: TensorBoard's event reader, ONNX Runtime,
#     safetensors (tensors to and from PyTorch);
#   the sources of every workspace member's crates (crates.io, `cargo fetch --locked`):
#     the Python package is not a default member, so a build leaves its crates
#     unfetched, and tests/hygiene.rs resolves its features offline.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
if ! command -v chromium >/dev/null 2>&1; then
    echo "famix: installing Debian's chromium for the browser tests" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
if ! command -v ffmpeg >/dev/null 2>&1 || ! command -v ffprobe >/dev/null 2>&1; then
    echo "famix: installing Debian's ffmpeg for the video tests" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends ffmpeg >/dev/null
fi
if ! "$here/.venv/bin/python" -c "import tensorboard, onnxruntime, safetensors" >/dev/null 2>&1; then
    echo "famix: installing the test clients (tools/requirements-test.txt) into .venv" >&2
    "$here/.venv/bin/pip" install --quiet --disable-pip-version-check --no-deps -r "$here/tools/requirements-test.txt"
fi
cargo fetch --locked --manifest-path "$here/Cargo.toml" >/dev/null 2>&1 || cargo fetch --locked --manifest-path "$here/Cargo.toml"
