#!/usr/bin/env bash
# Installs libtorch 2.11.0 (from the PyPI torch wheel, the only offline-reachable route)
# and ONNX Runtime 1.32.0 (from its PyPI wheel) into a per-user cache that every clone
# reuses, then links it as ./.venv.
# Idempotent: does nothing when the venv already imports torch 2.11.0.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${FAMIX_TORCH_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/famix/torch-2.11.0}
want=2.11.0

if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import torch,sys; sys.exit(0 if torch.__version__.startswith('$want') else 1)" 2>/dev/null; then
    :
else
    echo "famix: installing torch==$want (libtorch) into $venv (about 2.2 GB, once per machine)" >&2
    mkdir -p "$(dirname "$venv")"
    tmp="$venv.partial.$$"
    rm -rf "$tmp"
    python3 -m venv "$tmp"
    pip=("$tmp/bin/pip" install --quiet --no-deps --disable-pip-version-check)
    "${pip[@]}" "torch==$want"
    # torch's own pure-python needs (only for `import torch` in tools/ scripts).
    "${pip[@]}" typing-extensions==4.16.0 filelock==4.3.1 sympy==1.14.0 mpmath==1.4.1 networkx==3.6.1 \
        jinja2==3.1.6 markupsafe==3.0.4 fsspec==2026.9.0
    # libtorch_cuda links these directly, so they are needed even without a GPU.
    "${pip[@]}" nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85 \
        nvidia-cusparse==12.6.3.3 nvidia-nvjitlink==13.0.88 nvidia-cufft==12.0.0.61 \
        nvidia-cufile==1.15.1.6 nvidia-curand==10.4.0.35 nvidia-cublas==13.1.0.3 \
        "nvidia-cudnn-cu13==9.19.0.56" "nvidia-cusparselt-cu13==0.8.0" "nvidia-nccl-cu13==2.28.9" \
        "nvidia-nvshmem-cu13==3.4.5"
    # venvs hard-code their path: rebuild in place under the final name.
    rm -rf "$venv"
    mv "$tmp" "$venv"
    python3 -m venv --upgrade "$venv" >/dev/null
    sed -i "s#$tmp#$venv#g" "$venv"/bin/* 2>/dev/null || true
    "$venv/bin/python" -c "import torch; print('famix: torch', torch.__version__, 'ready', file=__import__('sys').stderr)"
fi

# ONNX Runtime's shared library for famix's onnxruntime engine (loaded at run time from
# this wheel's onnxruntime/capi/; the Python package around it is not needed by famix).
ort=1.32.0
if ! ls "$venv"/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.$ort >/dev/null 2>&1; then
    echo "famix: installing onnxruntime==$ort (its libonnxruntime.so) into $venv" >&2
    "$venv/bin/pip" install --quiet --no-deps --disable-pip-version-check "onnxruntime==$ort"
fi

# Tools that regenerate fixtures also need numpy/ftfy/regex/...: exact versions from
# tools/requirements-tools.txt, installed only on request.
if [ "${1:-}" = "--tools" ]; then
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps -r "$here/tools/requirements-tools.txt"
fi

if [ "$(readlink "$here/.venv" 2>/dev/null)" != "$venv" ]; then
    rm -rf "$here/.venv"
    ln -s "$venv" "$here/.venv"
fi
