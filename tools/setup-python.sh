#!/usr/bin/env bash
# `make python`: builds the Python package's wheel into target/wheels/ and installs it
# into python/.venv. With --test (`make test`): also formatting and clippy -D warnings
# of crates/famix-py first, and its pytest suite after. The venv reuses the per-user PyTorch 2.11 that `make setup`
# installed (a .pth file puts its site-packages on the path, so torch is not
# downloaded twice), and gets tools/requirements-python.txt (exact versions).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
"$here/tools/setup-libtorch.sh"
torch_venv=$(readlink -f .venv)
venv=python/.venv
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
torch_site=$("$torch_venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$torch_site" >"$site/famix-torch.pth"
if ! "$venv/bin/python" -c "import maturin, pytest, numpy, tqdm, PIL, safetensors" >/dev/null 2>&1; then
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps -r tools/requirements-python.txt
fi
# The extension is built against this venv's Python and the torch it imports; it links
# that libtorch (rpath), so the wheel is not "repaired" with copies of it (auditwheel skip).
export LIBTORCH_USE_PYTORCH=1 VIRTUAL_ENV="$here/$venv" PATH="$here/$venv/bin:$PATH"
if [ "${1:-}" = "--test" ]; then
    cargo fmt -p famix-py --check
    cargo clippy --release --locked -p famix-py -- -D warnings
fi
rm -f target/wheels/famix-*.whl
# The package is built alone (never with the command in one cargo invocation); with the
# main build's features it reuses the compiled library and libtorch bindings.
maturin build --quiet --release --locked --auditwheel skip --manifest-path crates/famix-py/Cargo.toml \
    --interpreter "$here/$venv/bin/python" --out "$here/target/wheels"
"$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps --force-reinstall target/wheels/famix-*.whl
"$venv/bin/python" -c "import famix; print('famix', famix.__version__, 'installed in $venv', file=__import__('sys').stderr)"
if [ "${1:-}" = "--test" ]; then
    "$venv/bin/python" -m pytest -q crates/famix-py/tests
fi
