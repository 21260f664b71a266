"""Layer-1 statistics of the miniature (docs/src/design.md §9): where the mined styles
put the per-channel mean and standard deviation of CLIP's layer-1 features, next to
where the source (day) puts them and where each other condition does.

  python tools/miniature_stats.py --clip ~/.cache/famix/demo-clip-*/run/clip.safetensors \
      --data demo-out/data --bank demo-out/styles-generic.safetensors \
      --bank demo-out/styles-test-conditions.safetensors

Per image, layer-1 features (the frozen CLIP stem and layer1, as the segmenter computes
them at output stride 16) are cut into the 3×3 grid training mixes, and each patch gives
a per-channel (μ, σ). For every set, per channel: the mean μ and mean σ over its
patches. Printed per set (Markdown):

- μ range / σ range: min and max over channels of those means;
- |Δμ| / s_μ: mean over channels of |mean μ − day's mean μ| in units of day's spread of
  μ across patches (how far the set moves the means, against the source's own spread);
- |log σ/σ_day|: mean over channels of |log(mean σ / day's mean σ)|;
- cos(Δμ, Δμ_cond) per test condition: the cosine between the set's shift of the means
  from day and the condition's (for a bank: does it move μ the way that condition does).

The tiny CLIP's architecture is read from the checkpoint's shapes, as famix does; the
model is tools/famix_ref.py's twin. Images are decoded by Pillow.
"""
import argparse
import glob
import os
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(__file__))
import famix_ref as R  # noqa: E402

CONDITIONS = ["day", "dusk", "night", "fog", "rain", "snow"]
TESTS = ["night", "fog", "rain", "snow"]


def visual(clip_path):
    w = load_file(clip_path)
    vis = {k[len("visual."):]: v for k, v in w.items() if k.startswith("visual.")}
    layers = [len({k.split(".")[1] for k in vis if k.startswith(f"layer{i}.")}) for i in range(1, 5)]
    width = vis["layer1.0.conv1.weight"].shape[1]
    m = R.ModifiedResNet(layers, width, output_dim=None, os=16)
    missing, unexpected = m.load_state_dict({k: v for k, v in vis.items() if not k.startswith("attnpool.")}, strict=False)
    if missing:
        raise SystemExit(f"{clip_path}: missing {missing}")
    return m.eval()


def patch_stats(model, paths, grid=3):
    mean = torch.tensor(R.CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(R.CLIP_STD).view(1, 3, 1, 1)
    mus, sds = [], []
    with torch.no_grad():
        for p in paths:
            x = torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1)[None].float() / 255
            f = model.low((x - mean) / std)[0]
            c, h, w = f.shape
            for i in range(grid):
                for j in range(grid):
                    q = f[:, i * h // grid:(i + 1) * h // grid, j * w // grid:(j + 1) * w // grid].reshape(c, -1)
                    mus.append(q.mean(1))
                    sds.append(q.std(1, unbiased=False))
    return torch.stack(mus), torch.stack(sds)


def bank_stats(path):
    b = load_file(path)
    mus = torch.cat([v for k, v in b.items() if k.endswith("/mu")])
    sds = torch.cat([v for k, v in b.items() if k.endswith("/sigma")])
    return mus, sds


def row(name, mu, sd, day, cond_shift):
    m, s = mu.mean(0), sd.mean(0)
    dm = m - day["mu"]
    cells = [
        f"{m.min():.3f} – {m.max():.3f}",
        f"{s.min():.3f} – {s.max():.3f}",
        f"{(dm.abs() / day['spread']).mean():.2f}",
        f"{(s / day['sd']).log().abs().mean():.3f}",
    ]
    for t in TESTS:
        cos = torch.nn.functional.cosine_similarity(dm, cond_shift[t], dim=0) if dm.norm() > 0 else torch.tensor(float("nan"))
        cells.append(f"{cos:+.2f}")
    return f"| {name} | {len(mu)} | " + " | ".join(cells) + " |"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--clip", required=True)
    p.add_argument("--data", required=True, help="the demo's data folder (one folder dataset per condition)")
    p.add_argument("--bank", action="append", default=[])
    args = p.parse_args()
    model = visual(args.clip)
    sets = {}
    for c in CONDITIONS:
        split = "train" if c == "day" else "val"
        paths = sorted(glob.glob(os.path.join(args.data, c, "images", split, "*.png")))
        if not paths:
            raise SystemExit(f"no images in {args.data}/{c}/images/{split}")
        sets[c if c != "day" else "day (source, train)"] = patch_stats(model, paths)
    dmu, dsd = sets["day (source, train)"]
    day = {"mu": dmu.mean(0), "sd": dsd.mean(0), "spread": dmu.std(0)}
    cond_shift = {t: sets[t][0].mean(0) - day["mu"] for t in TESTS}
    for b in args.bank:
        sets[f"bank {os.path.basename(b)}"] = bank_stats(b)
    print("| set | patches/styles | μ range | σ range | abs(Δμ)/s_μ | abs(log σ/σ_day) | "
          + " | ".join(f"cos(Δμ, Δμ_{t})" for t in TESTS) + " |")
    print("|---|---:|---|---|---:|---:|" + "---:|" * len(TESTS))
    for name, (mu, sd) in sets.items():
        print(row(name, mu, sd, day, cond_shift))


if __name__ == "__main__":
    main()
