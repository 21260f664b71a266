"""torch.optim.AdamW on given parameters and per-step gradients: the real client that
checks famix's AdamW (tests/optim.rs).

Usage: adamw_torch.py IN.safetensors OUT.safetensors STEPS LR WD BETA1 BETA2 EPS
IN holds param.<name> and grad.<step>.<name>; OUT gets param.<name>, exp_avg.<name>,
exp_avg_sq.<name> after STEPS steps (single-tensor path, as on the CPU).
"""
import sys

import torch
from safetensors.torch import load_file, save_file


def main():
    src, dst, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    lr, wd, b1, b2, eps = map(float, sys.argv[4:9])
    t = load_file(src)
    names = sorted(k[len("param."):] for k in t if k.startswith("param."))
    params = {n: torch.nn.Parameter(t["param." + n].clone()) for n in names}
    opt = torch.optim.AdamW(list(params.values()), lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd, foreach=False)
    for s in range(steps):
        for n in names:
            params[n].grad = t[f"grad.{s}.{n}"].clone()
        opt.step()
    out = {}
    for n in names:
        st = opt.state[params[n]]
        out["param." + n] = params[n].detach().clone()
        out["exp_avg." + n] = st["exp_avg"].clone()
        out["exp_avg_sq." + n] = st["exp_avg_sq"].clone()
    save_file(out, dst)


if __name__ == "__main__":
    main()
