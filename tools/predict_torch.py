"""The PyTorch side of the `famix predict` end-to-end measurement: the same job as
`famix predict CKPT DIR --out OUT` — decode every PNG, normalise with CLIP's mean/std,
segment, write <stem>_trainid.png and <stem>_color.png — done the usual PyTorch way
(DataLoader worker processes for decoding, the model in eval mode under no_grad, PIL
for writing), on famix's PyTorch twin (tools/famix_ref.py) with the checkpoint's weights.

  python tools/predict_torch.py --checkpoint model.pth --out OUT DIR   # prints one JSON line
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(__file__))
import famix_ref as R  # noqa: E402

PALETTE = [(128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
           (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
           (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32)]


COLOURS = np.array(PALETTE + [(0, 0, 0)] * (256 - len(PALETTE)), dtype=np.uint8)


def save(out, stem, ids):
    """Writes <stem>_trainid.png and <stem>_color.png of uint8 train ids (H, W), as famix predict does."""
    Image.fromarray(ids).save(os.path.join(out, stem + "_trainid.png"))
    Image.fromarray(COLOURS[ids]).save(os.path.join(out, stem + "_color.png"))


class Folder(torch.utils.data.Dataset):
    def __init__(self, root):
        self.files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.lower().endswith(".png"))

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        img = np.asarray(Image.open(self.files[i]).convert("RGB"))
        return torch.from_numpy(img.copy()).permute(2, 0, 1), os.path.splitext(os.path.basename(self.files[i]))[0]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("folder")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    sd = torch.load(a.checkpoint, map_location="cpu", weights_only=False)
    sd = sd.get("model_state", sd)
    layers = [len({k.split(".")[2] for k in sd if k.startswith(f"backbone.layer{i}.")}) for i in range(1, 5)]
    width = sd["backbone.conv3.weight"].shape[0]
    k = sd["classifier.classifier.3.weight"].shape[0]
    seg = R.Segmenter(layers, width, k, 16, sd["classifier.aspp.project.0.weight"].shape[0], sd["classifier.project.0.weight"].shape[0])
    seg.load_state_dict(sd)
    seg.eval()
    mean = torch.tensor(R.CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(R.CLIP_STD).view(1, 3, 1, 1)
    os.makedirs(a.out, exist_ok=True)
    ds = Folder(a.folder)
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=a.workers)
    t0 = time.perf_counter()
    n = 0
    with torch.no_grad():
        for img, stem in loader:
            x = (img.float() / 255 - mean) / std
            save(a.out, stem[0], seg(x).argmax(1)[0].to(torch.uint8).numpy())
            n += 1
    secs = time.perf_counter() - t0
    print(json.dumps({"what": "predict", "impl": "pytorch", "images": n, "seconds": secs, "images_per_s": n / secs}))


if __name__ == "__main__":
    main()
