"""int8 against fp32 on real images, through the `famix` command itself: predicts each
folder with `--engine onnxruntime` (fp32) and with `--int8 CALIBRATION`, and prints,
per folder, the share of pixels whose train id is the same (one JSON line each).

  famix calibrate --checkpoint CKPT --images SOURCE/images/train --out int8.json
  python tools/int8_agreement.py --checkpoint CKPT --calibration int8.json DIR...

Calibrate on the source domain; the folders can be any domain (README reports the
demo's source validation images and its five unseen conditions).
"""
import argparse
import json
import pathlib
import subprocess
import tempfile

import numpy as np
from PIL import Image

p = argparse.ArgumentParser()
p.add_argument("--famix", default="target/release/famix")
p.add_argument("--checkpoint", required=True)
p.add_argument("--calibration", required=True)
p.add_argument("dirs", nargs="+")
a = p.parse_args()
for d in a.dirs:
    with tempfile.TemporaryDirectory() as tmp:
        outs = {}
        for name, extra in [("fp32", ["--engine", "onnxruntime"]), ("int8", ["--int8", a.calibration])]:
            out = pathlib.Path(tmp) / name
            subprocess.run([a.famix, "predict", "--checkpoint", a.checkpoint, d, "--out", str(out), *extra],
                           check=True, capture_output=True)
            outs[name] = out
        same = total = 0
        for f in sorted(outs["fp32"].rglob("*_trainid.png")):
            x = np.asarray(Image.open(f))
            y = np.asarray(Image.open(outs["int8"] / f.relative_to(outs["fp32"])))
            same += int((x == y).sum())
            total += x.size
        print(json.dumps({"images": d, "pixels": total, "int8_agreement": same / max(total, 1)}), flush=True)
