"""ONNX Runtime's own profile of the two fp32 graphs famix's CPU engine is compared with,
same weights: the official FAMix model exported by torch.onnx.export (as
tools/bench_official.py does) and famix's graph of that model's checkpoint
(`famix export` of the reference .pth, input size fixed as the engine's first session
is). Prints, per graph, one JSON line: the median forward time and the kernel time per
operator type (ms per forward, ONNX Runtime's profiler), so what separates the two
engines can be read off.

  python tools/ort_profile.py --famix-repo /path/to/FAMix [--famix target/release/famix] [--size 512x512] [--threads 2]
"""
import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, os.path.dirname(__file__))
import bench_official as B  # noqa: E402


def profile(path, x, threads, runs):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.enable_profiling = True
    so.profile_file_prefix = os.path.join(os.path.dirname(path), "profile")
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        s.run(None, {"image": x})
        times.append((time.perf_counter() - t) * 1e3)
    ops = collections.Counter()
    with open(s.end_profiling()) as f:
        for e in json.load(f):
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                ops[e["args"]["op_name"]] += e["dur"] / 1e3 / runs
    return statistics.median(times[2:]), {k: round(v, 1) for k, v in ops.most_common()}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--famix-repo", required=True)
    p.add_argument("--famix", default="target/release/famix")
    p.add_argument("--size", default="512x512")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=12)
    a = p.parse_args()
    h, w = map(int, a.size.split("x"))
    torch.set_num_threads(a.threads)
    model = B.official_model(a.famix_repo).eval()
    x = torch.randn(1, 3, h, w)
    tmp = tempfile.mkdtemp(prefix="famix-ort-profile-")
    official = B.export_official(B.Logits(model).eval(), lambda: x)
    ckpt = os.path.join(tmp, "official_weights.pth")
    torch.save({"model_state": model.state_dict()}, ckpt)
    mine = os.path.join(tmp, "famix.onnx")
    subprocess.run([a.famix, "export", "--checkpoint", ckpt, "--height", str(h), "--width", str(w), "--out", mine],
                   check=True, capture_output=True)
    for name, path in [("official export", official), ("famix graph", mine)]:
        ms, ops = profile(path, x.numpy(), a.threads, a.runs)
        print(json.dumps({"graph": name, "size": a.size, "threads": a.threads, "median_ms": round(ms, 1), "kernel_ms_by_op": ops}),
              flush=True)


if __name__ == "__main__":
    main()
