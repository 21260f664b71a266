#!/usr/bin/env bash
# README's CPU inference table from one command: in one run, the official FAMix model
# code (eager; PyTorch's best CPU path: trace + freeze + optimize_for_inference with
# channels-last input; ONNX Runtime on its torch.onnx export) and famix (libtorch and
# its ONNX Runtime engine, fp32; libtorch bf16), and int8 on ONNX Runtime (ORT's own
# quantiser on the official export; famix --int8), each normalise + network + argmax
# on 1×SIZE random pixels, RN50-sized random weights, THREADS threads everywhere. The
# int8 lines are calibrated on the timed input (for speed: random weights make their
# agreement meaningless; README gives it on the demo's trained model).
#
# Usage: tools/bench_infer_side_by_side.sh /path/to/FAMix [SIZE=512x512] [THREADS=2]
# Needs the tools venv (`tools/setup-libtorch.sh --tools`) and target/release/famix.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=${1:?usage: $0 /path/to/FAMix-checkout [HxW] [threads]}
size=${2:-512x512}
threads=${3:-2}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
export OMP_NUM_THREADS=$threads
.venv/bin/python tools/bench_official.py --famix-repo "$repo" --what infer --infer-size "$size" --warmup 2 --iters 7 \
    --infer-engines eager,best,onnxruntime,onnxruntime-int8 --threads "$threads" 2>/dev/null | grep '^{' >>"$out"
target/release/famix bench --device cpu --what infer --batch 1 --infer-size "$size" --warmup 2 --iters 7 --json --int8 2>/dev/null >>"$out"
target/release/famix bench --device cpu --what infer --batch 1 --infer-size "$size" --warmup 2 --iters 7 --json --amp bf16 \
    --engine torch 2>/dev/null >>"$out"
.venv/bin/python - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
base = next(r["median_ms"] for r in rows if r.get("impl") == "official" and r["engine"] == "eager")
print("| implementation | engine | precision | median ms | vs official eager fp32 |")
print("|---|---|---|---|---|")
for r in rows:
    impl = "official FAMix code" if r.get("impl") == "official" else "famix"
    extra = f", agreement {r['fp32_agreement'] * 100:.2f} %" if r.get("fp32_agreement") is not None else ""
    print(f"| {impl} | {r.get('engine', '-')} | {r['amp']}{extra} | {r['median_ms']:.1f} | {base / r['median_ms']:.2f}× |")
PY
