#!/usr/bin/env bash
# The GPU measurements of the performance issue, in one run on a CUDA machine that
# has PyTorch 2.11 (e.g. the device tool's H200): famix and the PyTorch twin side by
# side, fp32 and bf16. Usage: tools/gpu_bench.sh [path/to/famix] > results.jsonl
set -euo pipefail
cd "$(dirname "$0")/.."
famix=${1:-target/release/famix}
export LD_LIBRARY_PATH=$(python3 -c "import torch,os;print(os.path.dirname(torch.__file__)+'/lib')")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader >&2 || true
for amp in fp32 bf16; do
    "$famix" bench --device cuda --what train,infer,mine --amp "$amp" --json
    python3 tools/bench_torch.py --device cuda --what train,infer,mine --amp "$amp"
done
"$famix" bench --device cuda --what loader --batch 8 --crop 768 --warmup 3 --iters 50 --json
