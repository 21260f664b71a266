"""The PyTorch side of `famix bench`: the same workloads on famix's PyTorch twin
(tools/famix_ref.py, written from docs/src/design.md), printing the same JSON keys.

  python tools/bench_torch.py --what train,infer,mine --device cuda --batch 8 --crop 768
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
import famix_ref as R  # noqa: E402

ARCH = {"rn50": ([3, 4, 6, 3], 64, 1024), "rn101": ([3, 4, 23, 3], 64, 512), "tiny": ([1, 1, 2, 2], 16, 64)}


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def timed(args, dev, fn):
    for _ in range(args.warmup):
        fn()
    sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    ms = []
    for _ in range(max(args.iters, 1)):
        t = time.perf_counter()
        fn()
        sync(dev)
        ms.append((time.perf_counter() - t) * 1e3)
    peak = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else None
    return ms, peak


def report(args, what, batch, h, w, ms, peak):
    med = statistics.median(ms)
    print(json.dumps({"what": what, "impl": "pytorch", "device": args.device, "arch": args.arch, "amp": args.amp,
                      "batch": batch, "height": h, "width": w, "iters": len(ms), "median_ms": med, "min_ms": min(ms),
                      "max_ms": max(ms), "peak_mem_mb": peak, "images_per_s": batch * 1e3 / med}), flush=True)


def segmenter(args, dev):
    layers, width, _ = ARCH[args.arch]
    ch = (256, 48) if args.arch != "tiny" else (64, 16)
    torch.manual_seed(0)
    return R.Segmenter(layers, width, 19, 16, *ch).to(dev)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--what", default="train,infer,mine")
    p.add_argument("--arch", default="rn50", choices=list(ARCH))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=768)
    p.add_argument("--infer-size", default="1024x2048")
    p.add_argument("--mine-batch", type=int, default=16)
    p.add_argument("--mine-crop", type=int, default=768)
    p.add_argument("--mine-iters", type=int, default=100)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--amp", default="fp32", choices=["fp32", "bf16"])
    args = p.parse_args()
    dev = torch.device(args.device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.amp == "bf16")
    mean = torch.tensor(R.CLIP_MEAN, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(R.CLIP_STD, device=dev).view(1, 3, 1, 1)
    for what in args.what.split(","):
        if what == "infer":
            seg = segmenter(args, dev).eval()
            h, w = map(int, args.infer_size.split("x"))
            x = ((torch.randint(0, 256, (1, 3, h, w), dtype=torch.uint8).to(dev).float() / 255) - mean) / std

            def run():
                with torch.no_grad(), amp:
                    seg(x)
            report(args, "infer", 1, h, w, *timed(args, dev, run))
        elif what == "train":
            seg = segmenter(args, dev)
            R.freeze_synthetic(seg)
            R.set_train_modes(seg)
            c = seg.backbone.width * 4
            bank_mu = {k: torch.rand(4, c, device=dev) for k in list(range(19)) + [255]}
            bank_sd = {k: torch.rand(4, c, device=dev) + 0.2 for k in bank_mu}
            params = [(n, q) for n, q in seg.named_parameters() if q.requires_grad]
            opt = torch.optim.SGD([{"params": [q for n, q in params if n.startswith("backbone")], "lr": 0.01},
                                   {"params": [q for n, q in params if n.startswith("classifier")], "lr": 0.1}],
                                  lr=0.1, momentum=0.9, weight_decay=1e-4)
            b, s = args.batch, args.crop
            imgs = torch.randint(0, 256, (b, 3, s, s), dtype=torch.uint8)
            labels = torch.randint(0, 19, (b, s, s), dtype=torch.uint8)
            beta = torch.distributions.Beta(0.1, 0.1)

            def run():
                x = ((imgs.to(dev).float() / 255) - mean) / std
                y = labels.to(dev).long()
                classes = [[int(y[i, (k // 3) * (s // 3), (k % 3) * (s // 3)]) for k in range(9)] for i in range(b)]
                picks = [[k % 4 for k in range(9)] for _ in range(b)]
                mix_s = beta.sample((b, c, 1, 1)).to(dev)
                opt.zero_grad()
                with amp:
                    out = seg(x, restyle=lambda f: R.mix_styles(f, classes, bank_mu, bank_sd, picks, mix_s, 3))
                    loss = F.cross_entropy(out.float(), y, ignore_index=255, label_smoothing=0.1)
                loss.backward()
                opt.step()
            report(args, "train", b, s, s, *timed(args, dev, run))
        elif what == "mine":
            layers, width, emb = ARCH[args.arch]
            torch.manual_seed(0)
            m = R.CLIP(layers, width, emb, 224).to(dev).eval()
            v = m.visual
            for q in m.parameters():
                q.requires_grad_(False)
            b, s = args.mine_batch, args.mine_crop
            x = ((torch.randint(0, 256, (b, 3, s, s), dtype=torch.uint8).to(dev).float() / 255) - mean) / std
            dom = [[(i * 9 + k) % 20 for k in range(9)] for i in range(b)]
            dom = [[255 if d == 19 else d for d in row] for row in dom]

            def run():
                with torch.no_grad():
                    f1 = v.low(x)
                sel = R.select_patches(dom, 3)
                targets = F.normalize(torch.randn(len(sel), emb, device=dev), dim=-1)
                with amp:
                    R.pin_mine(v, f1, sel, targets, 3, args.mine_iters)
            report(args, "mine", b, s, s, *timed(args, dev, run))


if __name__ == "__main__":
    main()
