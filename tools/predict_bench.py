"""`famix predict` end to end vs the same job in PyTorch (tools/predict_torch.py) and in
a script running ONNX Runtime on famix's exported model (tools/predict_ort.py), in one
run on one machine: makes N street-like 1024x2048 PNGs and a random-weight RN50
segmenter checkpoint (reference .pth layout, so every side loads the same weights),
then times each command over the folder (wall clock of the whole command, start-up and
model load included, outputs written). The ONNX Runtime script gets the export
`famix export --include-preprocessing --output trainid --height 1024 --width 2048`
made beforehand, untimed (normalisation and argmax in the graph, sizes fixed: its
fastest form). Prints one JSON line per side.

  python tools/predict_bench.py [--famix target/release/famix] [--images 8] [--threads 2] [--engines torch,onnxruntime]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(__file__))
import famix_ref as R  # noqa: E402


def street(i, h=1024, w=2048):
    """A smooth synthetic frame (sky, buildings, road) with mild noise: PNG-sized like a photo."""
    rng = np.random.default_rng(i)
    y = np.linspace(0, 1, h)[:, None, None]
    x = np.linspace(0, 1, w)[None, :, None]
    img = np.where(y < 0.4, [120, 170, 230], np.where(y < 0.6, [140, 120, 100], [100, 100, 105])) * (0.8 + 0.2 * x)
    img = img + rng.normal(0, 6, (h, w, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--famix", default="target/release/famix")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--engines", default="torch,onnxruntime", help="famix --engine values to time, one line each; "
                   "int8: --int8 with a calibration made (untimed) on the first frame, for speed")
    a = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="famix-predict-bench-")
    folder = os.path.join(tmp, "images")
    os.makedirs(folder)
    for i in range(a.images):
        street(i).save(os.path.join(folder, f"frame_{i:04d}.png"))
    torch.manual_seed(0)
    seg = R.Segmenter([3, 4, 6, 3], 64, 19, 16)
    R.random_bn_stats(seg, torch.Generator().manual_seed(0))
    ckpt = os.path.join(tmp, "rn50_random.pth")
    torch.save({"model_state": seg.state_dict()}, ckpt)
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    for engine in a.engines.split(","):
        flags = ["--engine", engine]
        if engine == "int8":
            cal = os.path.join(tmp, "int8.json")
            subprocess.run([a.famix, "calibrate", "--checkpoint", ckpt, "--images", os.path.join(folder, "frame_0000.png"),
                            "--out", cal], check=True, env=env, capture_output=True)
            flags = ["--int8", cal]
        t0 = time.perf_counter()
        subprocess.run([a.famix, "predict", "--checkpoint", ckpt, "--device", "cpu", *flags,
                        "--out", os.path.join(tmp, "famix-" + engine), folder], check=True, env=env, stderr=subprocess.DEVNULL)
        secs = time.perf_counter() - t0
        print(json.dumps({"what": "predict", "impl": "famix", "engine": engine, "images": a.images, "height": 1024,
                          "width": 2048, "seconds": secs, "images_per_s": a.images / secs}), flush=True)
    script(a, env, folder, "predict_torch.py", ["--checkpoint", ckpt, "--out", os.path.join(tmp, "torch")])
    model = os.path.join(tmp, "famix_export.onnx")
    subprocess.run([a.famix, "export", "--checkpoint", ckpt, "--include-preprocessing", "--output", "trainid",
                    "--height", "1024", "--width", "2048", "--out", model], check=True, capture_output=True)
    script(a, env, folder, "predict_ort.py", ["--model", model, "--out", os.path.join(tmp, "ort")])


def script(a, env, folder, name, args):
    """Times one of the Python sides (the whole command, start-up and model load
    included, as famix is timed) and prints its JSON line."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), name), *args, "--threads", str(a.threads), folder],
                         check=True, env=env, capture_output=True, text=True).stdout
    secs = time.perf_counter() - t0
    r = json.loads(out)
    r.update({"height": 1024, "width": 2048, "loop_seconds": r["seconds"], "seconds": secs, "images_per_s": a.images / secs})
    print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
