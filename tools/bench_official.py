"""The official FAMix model code (astra-vision/FAMix, imported from a checkout, never
copied here) timed on the workloads of `famix bench`, printing the same JSON keys
with "impl": "official".

  git clone https://github.com/astra-vision/FAMix /tmp/FAMix
  python tools/bench_official.py --famix-repo /tmp/FAMix --what infer,train --infer-size 512x512 --batch 2 --crop 768

Inference runs on each of `--infer-engines` (one JSON line each, key "engine"):
`eager` (the model as the reference runs it), `best` (PyTorch's best CPU path:
torch.jit.trace + freeze + optimize_for_inference, channels-last input) and
`onnxruntime` (the model exported by torch.onnx.export, TorchScript exporter, opset 17,
run by ONNX Runtime's CPU provider with all graph optimisations and --threads threads)
and `onnxruntime-int8` (that export quantised by ONNX Runtime's own static quantiser:
QDQ, u8 activations, s8 per-channel weights, MinMax ranges calibrated on the timed
input; its line has "amp": "int8" and the share of pixels whose class equals eager
fp32's as "fp32_agreement").
Each times normalisation, network and argmax, as `famix bench --what infer` does.

The model is built as the reference's `deeplabv3plus_resnet_clip` does (CLIP RN50 image
tower via `resnet_clip.build_model`, `DeepLabHeadV3Plus`, `DeepLabV3`), from a
random-weight CLIP state dict instead of the downloaded RN50.pt (same shapes). The
training step is the reference's: style transfer with mixing (`transfer=True,
mix=True`, its 3×3 patch loop over 768² crops), cross-entropy, SGD. The reference moves
its mixing tensors to 'cuda' unconditionally; on a CPU run this script maps those
`.to('cuda')` calls to the CPU, nothing else.
"""
import argparse
import json
import os
import random
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
import famix_ref as R  # noqa: E402


def timed(args, fn):
    for _ in range(args.warmup):
        fn()
    ms = []
    for _ in range(max(args.iters, 1)):
        t = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - t) * 1e3)
    return ms


def report(args, what, batch, h, w, ms, engine=None, **extra):
    med = statistics.median(ms)
    r = {"what": what, "impl": "official", "device": "cpu", "arch": "rn50", "amp": args.amp, "batch": batch,
         "height": h, "width": w, "iters": len(ms), "median_ms": med, "min_ms": min(ms), "max_ms": max(ms),
         "images_per_s": batch * 1e3 / med}
    if engine:
        r["engine"] = engine
    r.update(extra)
    print(json.dumps(r), flush=True)


class Logits(torch.nn.Module):
    """The segmentation logits of the reference's DeepLabV3 (its forward returns a tuple)."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m(x)[0]


def infer_engines(args, model, amp, mean, std):
    model.eval()
    h, w = map(int, args.infer_size.split("x"))
    x = torch.randint(0, 256, (1, 3, h, w), dtype=torch.uint8)
    norm = lambda: ((x.float() / 255) - mean) / std  # noqa: E731
    net = Logits(model).eval()
    for engine in args.infer_engines.split(","):
        if engine == "eager":
            def run():
                with torch.no_grad(), amp:
                    net(norm()).argmax(1)
        elif engine == "best":
            with torch.no_grad(), amp:
                traced = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(net, norm().contiguous(memory_format=torch.channels_last))))

            def run(traced=traced):
                with torch.no_grad(), amp:
                    traced(norm().contiguous(memory_format=torch.channels_last)).argmax(1)
        elif engine == "onnxruntime":
            run = onnxruntime_runner(args, net, norm)
        elif engine == "onnxruntime-int8":
            run, agreement = onnxruntime_int8_runner(args, net, norm)
            report(args, "infer", 1, h, w, timed(args, run), engine, amp="int8", fp32_agreement=agreement)
            continue
        else:
            sys.exit(f"unknown engine {engine!r} (eager, best, onnxruntime, onnxruntime-int8)")
        report(args, "infer", 1, h, w, timed(args, run), engine)


def export_official(net, norm):
    import tempfile
    path = os.path.join(tempfile.mkdtemp(), "official.onnx")
    with torch.no_grad():
        torch.onnx.export(net, (norm(),), path, opset_version=17, input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "n", 2: "h", 3: "w"}}, dynamo=False)
    return path


def onnxruntime_runner(args, net, norm, path=None):
    import numpy as np
    import onnxruntime as ort
    path = path or export_official(net, norm)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = args.threads
    session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])

    def run():
        logits = session.run(None, {"image": norm().numpy()})[0]
        np.argmax(logits, axis=1)
    return run


def onnxruntime_int8_runner(args, net, norm):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"image": norm().numpy()}])

        def get_next(self):
            return next(self.items, None)

    src = export_official(net, norm)
    dst = src.replace(".onnx", ".int8.onnx")
    quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    run = onnxruntime_runner(args, net, norm, dst)
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    ids = ort.InferenceSession(dst, so, providers=["CPUExecutionProvider"]).run(None, {"image": norm().numpy()})[0].argmax(1)
    with torch.no_grad():
        ref = net(norm()).argmax(1).numpy()
    return run, float((ids == ref).mean())


def official_model(repo):
    sys.path.insert(0, repo)
    from network._deeplab import DeepLabHeadV3Plus, DeepLabV3  # the reference's code
    from network.backbone import resnet_clip
    torch.manual_seed(0)
    clip = R.CLIP([3, 4, 6, 3], 64, 1024, 224)
    sd = {k: v for k, v in clip.state_dict().items() if k.startswith("visual.")}
    sd["text_projection"] = torch.zeros(512, 1024)  # build_model reads embed_dim from it, then drops it
    backbone = resnet_clip.build_model(sd, replace_stride_with_dilation=[False, False, True])
    return DeepLabV3(backbone.visual, DeepLabHeadV3Plus(2048, 256, 19, [6, 12, 18]))


def cpu_only_cuda_moves():
    """The reference's mixing calls .to('cuda'); keep such tensors where they are on a CPU-only run."""
    orig = torch.Tensor.to

    def to(self, *a, **k):
        if a and a[0] == "cuda" and not torch.cuda.is_available():
            return self
        return orig(self, *a, **k)
    torch.Tensor.to = to


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--famix-repo", required=True)
    p.add_argument("--what", default="infer,train")
    p.add_argument("--infer-size", default="512x512")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--crop", type=int, default=768)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--amp", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--infer-engines", default="eager")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cpu_only_cuda_moves()
    model = official_model(args.famix_repo)
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.amp == "bf16")
    mean = torch.tensor(R.CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(R.CLIP_STD).view(1, 3, 1, 1)
    for what in args.what.split(","):
        if what == "infer":
            infer_engines(args, model, amp, mean, std)
        elif what == "train":
            train_step(args, model, amp, mean, std)


def train_step(args, model, amp, mean, std):
    """The reference's training iteration with style transfer and mixing (main.py)."""
    model.train()
    for n, q in model.backbone.named_parameters():  # its freeze for synthetic sources: last block of layer4 trains
        q.requires_grad_(n.startswith("layer4.2"))
    for n, m in model.backbone.named_modules():
        if isinstance(m, torch.nn.BatchNorm2d) and not n.startswith("layer4.2"):
            m.eval()
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)
    b, s = args.batch, args.crop
    imgs = torch.randint(0, 256, (b, 3, s, s), dtype=torch.uint8)
    labels = torch.randint(0, 19, (b, s, s))
    saved = {}
    for c in list(range(19)) + [255]:
        saved[f"{c}_mu"] = [torch.rand(256, 1, 1) for _ in range(4)]
        saved[f"{c}_std"] = [torch.rand(256, 1, 1) + 0.2 for _ in range(4)]
    beta = torch.distributions.Beta(0.1, 0.1)
    random.seed(0)

    def run():
        x = ((imgs.float() / 255) - mean) / std
        most = [[random.randrange(19) for _ in range(b)] for _ in range(9)]
        mix_s = beta.sample((b, 256, 1, 1))
        opt.zero_grad()
        with amp:
            out, _ = model(x, transfer=True, mix=True, most_list=most, saved_params=saved, activation=torch.nn.ReLU(), s=mix_s)
            loss = F.cross_entropy(out.float(), labels, ignore_index=255, label_smoothing=0.1)
        loss.backward()
        opt.step()
    report(args, "train", b, s, s, timed(args, run))


if __name__ == "__main__":
    main()
