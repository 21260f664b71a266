#!/usr/bin/env bash
# One GPU session, two results: every CUDA path of famix run once on real (procedural)
# data as a smoke test, then the timing table (famix and its PyTorch twin side by side,
# fp32 and bf16, and the loader).
#
# Needs: a CUDA machine whose python3 has PyTorch 2.11.x with CUDA (famix's shim is
# compiled against 2.11's C++ ABI), nvidia-smi, curl. The famix binary is built on the
# development machine and carried; its rpath points at that machine's libtorch, so the
# GPU machine's torch libraries are put first on LD_LIBRARY_PATH.
#
# Usage: tools/gpu_bench.sh [path/to/famix] > results.jsonl   (progress on stderr)
# GPU_BENCH_DEVICE=cpu runs the smoke test on the CPU (to check this script anywhere)
# and skips the CUDA checks and the timing table.
set -euo pipefail
cd "$(dirname "$0")/.."
famix=${1:-target/release/famix}
dev=${GPU_BENCH_DEVICE:-cuda}
say() { echo "gpu_bench: $*" >&2; }
die() { say "FAILED: $*"; exit 1; }

[ -x "$famix" ] || die "no famix binary at $famix (build it first: cargo build --release)"
if [ "$dev" = cuda ]; then
command -v nvidia-smi >/dev/null || die "nvidia-smi not found: not a CUDA machine?"
gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader) || die "nvidia-smi failed"
say "GPU, driver, memory: $gpu"

# The machine's torch must be 2.11.x with CUDA; its lib folder goes first on the path.
torch_lib=$(python3 - <<'EOF'
import os, sys
try:
    import torch
except Exception as e:
    sys.exit(f"python3 cannot import torch: {e}")
if not torch.__version__.startswith("2.11."):
    sys.exit(f"torch {torch.__version__} found; famix's shim needs 2.11.x")
if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} has no usable CUDA (built for CUDA {torch.version.cuda})")
print(os.path.join(os.path.dirname(torch.__file__), "lib"))
EOF
) || die "the machine's PyTorch is not usable (see above)"
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
say "torch libraries: $torch_lib"
fi
"$famix" --version >&2 || die "famix does not start with these libraries"

# ---- Smoke test: each CUDA path once, on the procedural world with the tiny test CLIP.
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
clip=crates/famix-cli/tests/fixtures/clip_a.safetensors.gz
n=0
step() {
    n=$((n + 1)); say "smoke $n: $1"; shift
    "$@" >"$work/step$n.out" 2>"$work/step$n.err" || { cat "$work/step$n.err" >&2; die "smoke step failed: $*"; }
}
step "synthetic data" "$famix" data synth --out "$work/data" --conditions day,night --split train=16 --split val=8
step "mining (PIN on CUDA)" "$famix" mine-styles --clip "$clip" --dataset folder --data-root "$work/data/day" --split train \
    --batch 4 --crop 72 --iters 5 --limit 2 --out "$work/bank.safetensors" --device "$dev"
step "training with style mixing, bf16, validation" "$famix" train --clip "$clip" --dataset folder --data-root "$work/data/day" \
    --split train --styles "$work/bank.safetensors" --out "$work/run" --batch 4 --crop 48 --iters 6 --val-interval 3 \
    --val-dataset folder --val-root "$work/data/night" --amp bf16 --device "$dev"
step "training, --deterministic --no-tf32" "$famix" train --clip "$clip" --dataset folder --data-root "$work/data/day" \
    --split train --styles "$work/bank.safetensors" --out "$work/run-det" --batch 4 --crop 48 --iters 3 \
    --deterministic --no-tf32 --device "$dev"
step "evaluation" "$famix" eval --checkpoint "$work/run/latest.safetensors" --dataset folder --data-root "$work/data/night" --device "$dev"
step "evaluation, deterministic" "$famix" eval --checkpoint "$work/run/latest.safetensors" --dataset folder \
    --data-root "$work/data/night" --deterministic --device "$dev"
step "prediction, bf16" "$famix" predict --checkpoint "$work/run/latest.safetensors" --out "$work/pred" --amp bf16 \
    --device "$dev" "$work/data/night/images/val"
port=$((20000 + RANDOM % 20000))
"$famix" serve --checkpoint "$work/run/latest.safetensors" --port "$port" --device "$dev" >"$work/serve.log" 2>&1 &
serve_pid=$!
for _ in $(seq 60); do curl -sf "http://127.0.0.1:$port/v1/health" >/dev/null && break; sleep 1; done
curl -sf "http://127.0.0.1:$port/v1/health" >/dev/null || { cat "$work/serve.log" >&2; die "serve did not come up"; }
say "smoke: serve under 16 concurrent requests"
img=$(ls "$work/data/night/images/val/"*.png | head -1)
pids=()
for _ in $(seq 16); do
    curl -sf -o /dev/null --data-binary "@$img" "http://127.0.0.1:$port/v1/segment?output=trainid" &
    pids+=($!)
done
failed=0
for p in "${pids[@]}"; do wait "$p" || failed=$((failed + 1)); done
kill "$serve_pid" 2>/dev/null || true
[ "$failed" = 0 ] || { cat "$work/serve.log" >&2; die "$failed of 16 serve requests failed"; }
if grep -E '^\[W|Warning:' "$work"/*.err "$work/serve.log"; then die "PyTorch printed warnings (above)"; fi
say "smoke test passed (export is CPU-only and skipped)"
[ "$dev" = cuda ] || exit 0

# ---- Timing table. Every engine that runs CUDA: libtorch only (`--engine all` picks
# it; the ONNX Runtime engine and its --int8 are CPU-only: famix loads ORT's CPU build).
for amp in fp32 bf16; do
    "$famix" bench --device "$dev" --what train,infer,mine --amp "$amp" --json
    python3 tools/bench_torch.py --device "$dev" --what train,infer,mine --amp "$amp"
done
"$famix" bench --device "$dev" --what loader --batch 8 --crop 768 --warmup 3 --iters 50 --json
