"""The ONNX Runtime side of the `famix predict` end-to-end measurement: the same job as
`famix predict CKPT DIR --out OUT` run the way an ONNX Runtime user would, on famix's own
exported model — decode every PNG (a DataLoader worker process, as tools/predict_torch.py),
run the graph exported with `famix export --include-preprocessing --output trainid`
(uint8 in, train ids out: normalisation and argmax inside the graph; fixed to the
images' size when exported with --height/--width), write <stem>_trainid.png and
<stem>_color.png with PIL. ONNX Runtime's CPU provider, all graph optimisations,
--threads intra-op threads.

  famix export --checkpoint CKPT --include-preprocessing --output trainid --height 1024 --width 2048 --out m.onnx
  python tools/predict_ort.py --model m.onnx --out OUT DIR   # prints one JSON line
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, os.path.dirname(__file__))
from predict_torch import Folder, save  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("folder")
    a = p.parse_args()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = a.threads
    session = ort.InferenceSession(a.model, so, providers=["CPUExecutionProvider"])
    os.makedirs(a.out, exist_ok=True)
    loader = torch.utils.data.DataLoader(Folder(a.folder), batch_size=1, num_workers=a.workers)
    t0 = time.perf_counter()
    n = 0
    for img, stem in loader:
        rgb = img.permute(0, 2, 3, 1).contiguous().numpy()  # (1, H, W, 3) uint8
        save(a.out, stem[0], session.run(None, {"image": rgb})[0][0].astype(np.uint8))
        n += 1
    secs = time.perf_counter() - t0
    print(json.dumps({"what": "predict", "impl": "onnxruntime-script", "images": n, "seconds": secs, "images_per_s": n / secs}))


if __name__ == "__main__":
    main()
