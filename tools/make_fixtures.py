"""Regenerates famix's committed PyTorch parity fixtures (crates/famix-cli/tests/fixtures/).

Run with `make fixtures` (torch 2.11 venv + numpy/ftfy/regex/pillow/open_clip's
tokenizer). Everything is seeded, so reruns give identical files.

Image operations are checked against Pillow 10.4 (the version era the reference ran
with; Pillow 13 changed the order of its two resampling passes).

Models are tiny random-weight CLIP ResNets; the PyTorch side is tools/famix_ref.py,
written from docs/src/design.md. Large checkpoints are stored gzip-compressed (famix reads .gz
transparently); the text tower's 49408-row token embedding holds coarsely quantised
values so it compresses well.
"""
import gzip
import importlib.util
import io
import json
import os
import pickle
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
import famix_ref as R  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT = os.path.join(ROOT, "crates", "famix-cli", "tests", "fixtures")
PROMPTS = json.load(open(os.path.join(ROOT, "crates", "famix", "assets", "prompts.json")))

torch.set_num_threads(2)


def gz(path, data):
    with open(path, "wb") as f:
        f.write(gzip.compress(data, mtime=0))


def save_gz_torch(obj, path):
    buf = io.BytesIO()
    torch.save(obj, buf)
    gz(path, buf.getvalue())


def open_clip_tokenizer():
    spec = importlib.util.find_spec("open_clip")
    folder = os.path.dirname(spec.origin)
    s = importlib.util.spec_from_file_location("oc_tokenizer", os.path.join(folder, "tokenizer.py"))
    mod = importlib.util.module_from_spec(s)
    s.loader.exec_module(mod)
    return mod.SimpleTokenizer()


def tokenize(tok, texts, ctx=77):
    out = torch.zeros(len(texts), ctx, dtype=torch.long)
    for i, t in enumerate(texts):
        ids = [tok.sot_token_id] + tok.encode(t) + [tok.eot_token_id]
        out[i, :len(ids)] = torch.tensor(ids)
    return out


# ------------------------------------------------------------------ CLIP models
TEXTS = ["a photo of a cat", "Ethereal Mist style road", "photo", ""]

# Smallest widths that keep multi-head attention: width 4 → 2 heads of 64 in the
# attention pool; text width 32 → 2 heads of 16.
CLIP_A = dict(vision_layers=[1, 1, 3, 3], vision_width=4, embed_dim=64, image_resolution=224,
              text_width=32, text_layers=2)
CLIP_B = dict(vision_layers=[2, 1, 2, 4], vision_width=4, embed_dim=48, image_resolution=64)


def used_token_ids():
    tok = open_clip_tokenizer()
    ids = set()
    for t in famix_prompt_corpus() + TEXTS + ["road", "sky", "car"]:
        ids.update(tok.encode(t))
    return sorted(ids)


def make_clip(cfg, seed):
    torch.manual_seed(seed)
    m = R.CLIP(**cfg)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        R.random_bn_stats(m, g)
        # Values on a 1/256 grid: the same tests, much smaller gzip files.
        for t in list(m.parameters()) + list(m.buffers()):
            if t.is_floating_point():
                t.copy_((t * 256).round() / 256)
        if m.has_text:
            # Only the token rows the fixtures use are non-zero (49408 rows otherwise
            # dominate the files); start/end tokens included.
            w = m.token_embedding.weight
            keep = torch.tensor(used_token_ids() + [49406, 49407])
            rows = w[keep].clone()
            w.zero_()
            w[keep] = rows
            m.logit_scale.fill_(2.5)
    return m.eval()


def fp16_like_openai(traced):
    """OpenAI's RN50.pt stores conv/linear weights (and projections) as fp16, BN in fp32."""
    for name, p in traced.named_parameters():
        if "bn" in name or name.endswith("downsample.1.weight") or name.endswith("downsample.1.bias") \
                or name.startswith("ln_") or ".ln_" in name or "positional_embedding" in name or name == "logit_scale":
            continue
        p.data = p.data.half()
    return traced


def save_clip_formats(m, stem, example):
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    traced = torch.jit.trace(m, example, check_trace=False)
    buf = io.BytesIO()
    torch.jit.save(traced, buf)
    script = buf.getvalue()
    import copy
    traced16 = fp16_like_openai(torch.jit.trace(copy.deepcopy(m), example, check_trace=False))
    buf = io.BytesIO()
    torch.jit.save(traced16, buf)
    script16 = buf.getvalue()
    st_buf = {k: v.contiguous() for k, v in sd.items()}
    if m.has_text:
        gz(f"{OUT}/{stem}_script.pt.gz", script)
        gz(f"{OUT}/{stem}_script_fp16.pt.gz", script16)
        save_gz_torch(sd, f"{OUT}/{stem}_state.pt.gz")
        tmp = f"{OUT}/.tmp.safetensors"
        save_file(st_buf, tmp)
        gz(f"{OUT}/{stem}.safetensors.gz", open(tmp, "rb").read())
        os.remove(tmp)
    else:
        # Variant B: plain (uncompressed) files.
        open(f"{OUT}/{stem}_script.pt", "wb").write(script)
        torch.save(sd, f"{OUT}/{stem}_state.pt")
        save_file(st_buf, f"{OUT}/{stem}.safetensors")
    # What the fp16 file holds, rounded back to fp32: expected outputs for that file.
    m16 = make_clip_from_state(m, {k: v.float() for k, v in traced16.state_dict().items()})
    return m16


def make_clip_from_state(m, sd):
    import copy
    m2 = copy.deepcopy(m)
    m2.load_state_dict(sd, strict=False)
    return m2.eval()


def pil_clip_crop(img, n):
    w, h = img.size
    if w <= h:
        nw, nh = n, int(n * h / w)
    else:
        nw, nh = int(n * w / h), n
    img = img.resize((nw, nh), Image.BICUBIC)
    top = int(round((nh - n) / 2.0))
    left = int(round((nw - n) / 2.0))
    return img.crop((left, top, left + n, top + n))


def to_normalized(img):
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255)
    mean = torch.tensor(R.CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(R.CLIP_STD).view(3, 1, 1)
    return ((x - mean) / std).unsqueeze(0)


def test_image(w, h, seed):
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), ((xx + yy) * 3) % 256], -1)
    noise = g.integers(0, 60, size=(h, w, 3))
    return Image.fromarray(np.clip(base + noise - 30, 0, 255).astype(np.uint8), "RGB")


def clip_fixtures(tok):
    exp = {}
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    exp["x64"] = x
    img = test_image(96, 80, 3)
    img.save(f"{OUT}/img_a.png")
    for name, cfg, seed in [("clip_a", CLIP_A, 100), ("clip_b", CLIP_B, 200)]:
        m = make_clip(cfg, seed)
        res = cfg["image_resolution"]
        m16 = save_clip_formats(m, name, torch.randn(1, 3, res, res))
        v = m.visual
        with torch.no_grad():
            exp[f"{name}.layer1"] = v.low(x)
            for os_ in (8, 16, 32):
                v.set_output_stride(os_)
                exp[f"{name}.layer4_os{os_}"] = v.high(v.low(x))
            v.set_output_stride(32)
            crop = pil_clip_crop(img, res)
            crop.save(f"{OUT}/img_a_crop{res}.png")
            xi = to_normalized(crop)
            exp[f"{name}.image_embedding"] = m.encode_image(xi)
            exp[f"{name}_fp16.image_embedding"] = m16.encode_image(xi)
            if m.has_text:
                texts = TEXTS
                exp[f"{name}.text_tokens"] = tokenize(tok, texts)
                exp[f"{name}.text_embedding"] = m.encode_text(tokenize(tok, texts))
                exp[f"{name}_fp16.text_embedding"] = m16.encode_text(tokenize(tok, texts))
                for i, p in enumerate(["Ethereal Mist style road", "photo"]):
                    t = tokenize(tok, [tpl.format(p) for tpl in PROMPTS["templates"]])
                    e = m.encode_text(t).mean(0)
                    exp[f"{name}.prompt_embedding{i}"] = e / e.norm()
                labels = ["road", "sky", "car"]
                te = []
                for l in labels:
                    e = m.encode_text(tokenize(tok, [tpl.format(l) for tpl in PROMPTS["templates"]])).mean(0)
                    te.append(e / e.norm())
                te = torch.stack(te)
                ie = m.encode_image(xi)
                ie = ie / ie.norm(dim=-1, keepdim=True)
                exp[f"{name}.zero_shot_probs"] = (m.logit_scale.exp() * ie @ te.T).softmax(-1)
    save_file({k: v.contiguous() for k, v in exp.items()}, f"{OUT}/expected_clip.safetensors")
    return make_clip(CLIP_A, 100)


# ------------------------------------------------------------------ tokenizer
def famix_prompt_corpus():
    texts = []
    for tpl in PROMPTS["templates"]:
        for style in PROMPTS["random_styles"]:
            for c in PROMPTS["class_names"]:
                texts.append(tpl.format(f"{style} {c}"))
        texts.append(tpl.format(PROMPTS["ignore_class_prompt"]))
    return texts


MISC_TEXTS = [
    "", " ", "Hello, World!", "a photo of a dog.", "It's a DOG's life; they're here, we've been, I'm ok, you'll see, he'd go",
    "don't can't won't", "100 bottles of beer: 3.14159, 2e10, 1,000,000", "café naïve résumé façade Æsir œuvre",
    "Straße Ärger Öl Übermut", "東京 タワー 서울 Москва αβγ", "emoji 😀🚗🌧️ and 👩‍👩‍👧", "   lots   of \t whitespace \n here  ",
    "&amp; &lt;tag&gt; &quot;quoted&quot; &#39;x&#39;", "“curly” ‘quotes’", "ﬁne ﬂuffy ligatures", "ＦＵＬＬ　ｗｉｄｔｈ",
    "punctuation!!! ??? ... --- ((brackets)) [x] {y} <z> @#$%^&*", "under_score snake_case CamelCase",
    "MiXeD CaSe WoRdS", "a" * 200, "the quick brown fox " * 30, "e\u0301 combining accent", "tab\tseparated\tvalues",
    "numbers12345words", "#hashtag @mention http://example.com/path?q=1",
]


def tokenizer_fixtures(tok):
    corpus = famix_prompt_corpus()
    buf = bytearray()
    for t in corpus:
        ids = [tok.sot_token_id] + tok.encode(t) + [tok.eot_token_id]
        buf += np.array([len(ids)] + ids, dtype="<u2").tobytes()
    gz(f"{OUT}/tokens_famix.u16.gz", bytes(buf))
    misc = []
    for t in MISC_TEXTS:
        ids = [tok.sot_token_id] + tok.encode(t) + [tok.eot_token_id]
        misc.append({"text": t, "ids": ids})
    json.dump({"count_famix": len(corpus), "misc": misc}, open(f"{OUT}/tokens_misc.json", "w"), ensure_ascii=False, indent=0)


# ------------------------------------------------------------------ segmenter
SEG = dict(layers=CLIP_A["vision_layers"], width=4, num_classes=5, aspp_ch=16, low_ch=8)


class PolyLR(torch.optim.lr_scheduler.LRScheduler):
    def __init__(self, opt, max_iters, power=0.9, min_lr=1e-6):
        self.max_iters, self.power, self.min_lr = max_iters, power, min_lr
        super().__init__(opt)

    def get_lr(self):
        return [max(b * (1 - self.last_epoch / self.max_iters) ** self.power, self.min_lr) for b in self.base_lrs]


def make_segmenter(clip_a):
    torch.manual_seed(300)
    seg = R.Segmenter(SEG["layers"], SEG["width"], SEG["num_classes"], 16, SEG["aspp_ch"], SEG["low_ch"])
    sd = {k[len("visual."):]: v for k, v in clip_a.state_dict().items()
          if k.startswith("visual.") and not k.startswith("visual.attnpool")}
    seg.backbone.load_state_dict(sd)
    with torch.no_grad():
        R.random_bn_stats(seg.classifier, torch.Generator().manual_seed(301))
    return seg


def segmenter_fixtures(clip_a):
    seg = make_segmenter(clip_a)
    exp = {}
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, 3, 48, 48, generator=g)
    exp["x"] = x
    seg.eval()
    with torch.no_grad():
        for os_ in (8, 16, 32):
            seg.set_output_stride(os_)
            exp[f"logits_os{os_}"] = seg(x)
    seg.set_output_stride(16)
    # Reference-layout training checkpoint (+ a plain famix-importable state).
    ref_state = {k: v for k, v in seg.state_dict().items()}
    opt = torch.optim.SGD([{"params": seg.backbone.parameters(), "lr": 0.01},
                           {"params": seg.classifier.parameters(), "lr": 0.1}], lr=0.1, momentum=0.9, weight_decay=1e-4)
    sched = PolyLR(opt, 100)
    torch.save({"cur_itrs": 750, "model_state": ref_state, "optimizer_state": opt.state_dict(),
                "scheduler_state": sched.state_dict(), "best_score": np.float64(0.4242)}, f"{OUT}/seg_a_ref.pth")
    # Labels predicted for img_a.png at OS16, scale 1 (eval transform = ToTensor+Normalize).
    img = Image.open(f"{OUT}/img_a.png").convert("RGB")
    with torch.no_grad():
        xi = to_normalized(img)
        pred = seg(xi).argmax(1)[0].to(torch.uint8).numpy()
        Image.fromarray(pred, "L").save(f"{OUT}/seg_a_pred_img_a.png")
        # scale 0.5 and ensemble (resizes with align_corners=True, as the reference's eval).
        small = F.interpolate(xi, scale_factor=0.5, mode="bilinear", align_corners=True)
        lo = F.interpolate(seg(small), size=xi.shape[-2:], mode="bilinear", align_corners=True)
        exp["img_a_logits_s05"] = lo
        exp["img_a_logits_ens"] = (lo + seg(xi)) / 2
    # One synthetic-policy training step: gradients, BN statistics and SGD update.
    R.freeze_synthetic(seg)
    R.set_train_modes(seg)
    seg.classifier.aspp.project[3].p = 0.0  # dropout off for a deterministic comparison
    y = torch.randint(0, SEG["num_classes"], (2, 48, 48), generator=g)
    y[:, :8, :8] = 255
    exp["y"] = y
    params = [(n, p) for n, p in seg.named_parameters() if p.requires_grad]
    opt = torch.optim.SGD([{"params": [p for n, p in params if n.startswith("backbone")], "lr": 0.01},
                           {"params": [p for n, p in params if n.startswith("classifier")], "lr": 0.1}],
                          lr=0.1, momentum=0.9, weight_decay=1e-4)
    out = seg(x)
    loss = F.cross_entropy(out, y, ignore_index=255, label_smoothing=0.1)
    opt.zero_grad()
    loss.backward()
    exp["train_loss"] = loss.detach().reshape(1)
    for n, p in params:
        exp[f"grad.{n}"] = p.grad.clone()
    opt.step()
    for n, p in params:
        exp[f"after.{n}"] = p.detach().clone()
    for n, b in seg.named_buffers():
        if "running" in n:
            exp[f"buffer.{n}"] = b.clone()
    save_file({k: v.contiguous() for k, v in exp.items()}, f"{OUT}/expected_seg.safetensors")


# ------------------------------------------------------------------ data
from PIL import ImageEnhance  # noqa: E402

JITTER_CASES = [((0.35, 1.6, 0.7), [2, 0, 1]), ((1.8, 0.2, 1.3), [0, 1, 2]), ((0.9, 1.1, 1.7), [1, 2, 0])]
RESIZE_CASES = [(37, 29, "bicubic"), (150, 130, "bicubic"), (50, 40, "bilinear"), (200, 170, "bilinear"), (33, 71, "nearest")]
PIL_FILTERS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}


def pil_jitter(img, factors, order):
    ops = [lambda im: ImageEnhance.Brightness(im).enhance(factors[0]),
           lambda im: ImageEnhance.Contrast(im).enhance(factors[1]),
           lambda im: ImageEnhance.Color(im).enhance(factors[2])]
    for k in order:
        img = ops[k](img)
    return img


def mapillary_transform(img, lbl, size):
    """The reference's ResizeHeight + CenterCropPad semantics (label pad value 0)."""
    w, h = img.size
    tw = int(w / h * size)
    img, lbl = img.resize((tw, size), Image.BICUBIC), lbl.resize((tw, size), Image.NEAREST)
    w, h = img.size
    pad_x = size - w if w < size else 0
    pad_y = size - h if h < size else 0
    if pad_x or pad_y:
        from PIL import ImageOps
        img = ImageOps.expand(img, border=(pad_x, pad_y, pad_x, pad_y), fill=0)
        lbl = ImageOps.expand(lbl, border=(pad_x, pad_y, pad_x, pad_y), fill=0)
    x1 = int(round((w - size) / 2.))
    y1 = int(round((h - size) / 2.))
    return img.crop((x1, y1, x1 + size, y1 + size)), lbl.crop((x1, y1, x1 + size, y1 + size))


CS_TABLE = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
            27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def confusion_metrics(pairs, k):
    hist = np.zeros((k, k), dtype=np.int64)
    for gt, pred in pairs:
        m = (gt >= 0) & (gt < k)
        hist += np.bincount(k * gt[m].astype(int) + pred[m], minlength=k * k).reshape(k, k)
    with np.errstate(divide="ignore", invalid="ignore"):
        iu = np.diag(hist) / (hist.sum(1) + hist.sum(0) - np.diag(hist))
        acc_cls = np.diag(hist) / hist.sum(1)
    return {"miou": float(np.nanmean(iu)), "overall_acc": float(np.diag(hist).sum() / hist.sum()),
            "mean_acc": float(np.nanmean(acc_cls)), "per_class_iou": [None if np.isnan(v) else float(v) for v in iu]}


def data_fixtures(clip_a):
    img = Image.open(f"{OUT}/img_a.png").convert("RGB")
    meta = {"jitter": [], "resize": []}
    for i, (factors, order) in enumerate(JITTER_CASES):
        pil_jitter(img, factors, order).save(f"{OUT}/jitter_{i}.png")
        meta["jitter"].append({"factors": factors, "order": order, "file": f"jitter_{i}.png"})
    for w, h, f in RESIZE_CASES:
        name = f"resize_{f}_{w}x{h}.png"
        img.resize((w, h), PIL_FILTERS[f]).save(f"{OUT}/{name}")
        meta["resize"].append({"width": w, "height": h, "filter": f, "file": name})
    # Mapillary-style transform on a landscape and a portrait image (size 64 for the test).
    g = np.random.default_rng(5)
    for name, (w, h) in {"land": (96, 80), "port": (40, 90)}.items():
        im = test_image(w, h, 9)
        lb = Image.fromarray(g.integers(0, 19, size=(h, w)).astype(np.uint8), "L")
        im.save(f"{OUT}/map_{name}_img.png")
        lb.save(f"{OUT}/map_{name}_lbl.png")
        ti, tl = mapillary_transform(im, lb, 64)
        ti.save(f"{OUT}/map_{name}_img_t.png")
        tl.save(f"{OUT}/map_{name}_lbl_t.png")
    json.dump(meta, open(f"{OUT}/transforms.json", "w"), indent=1)

    # A mini Cityscapes val split, and the metrics the PyTorch twin gets on it.
    seg = make_segmenter(clip_a).eval()
    root = f"{OUT}/cityscapes_mini"
    ids = list(range(0, 34))
    results = {}
    preds = {1.0: [], 0.5: [], "ens": []}
    for k, city in enumerate(["aachen", "aachen", "bonn"]):
        os.makedirs(f"{root}/leftImg8bit/val/{city}", exist_ok=True)
        os.makedirs(f"{root}/gtFine/val/{city}", exist_ok=True)
        stem = f"{city}_{k:06d}_000019"
        im = test_image(64, 40, 20 + k)
        im.save(f"{root}/leftImg8bit/val/{city}/{stem}_leftImg8bit.png")
        # Blocky labels so a 5-class model gets a non-trivial confusion matrix.
        lab = np.array(g.choice(ids, size=(5, 8)), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
        Image.fromarray(lab, "L").save(f"{root}/gtFine/val/{city}/{stem}_gtFine_labelIds.png")
        gt = np.vectorize(lambda v: CS_TABLE.get(int(v), 255))(lab).astype(np.int64)
        with torch.no_grad():
            x = to_normalized(im)
            base = seg(x)
            small = F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=True)
            lo = F.interpolate(seg(small), size=x.shape[-2:], mode="bilinear", align_corners=True)
        preds[1.0].append((gt, base.argmax(1)[0].numpy()))
        preds[0.5].append((gt, lo.argmax(1)[0].numpy()))
        preds["ens"].append((gt, ((lo + base) / 2).argmax(1)[0].numpy()))
    results["scale1"] = confusion_metrics(preds[1.0], SEG["num_classes"])
    results["scale05"] = confusion_metrics(preds[0.5], SEG["num_classes"])
    results["ensemble05"] = confusion_metrics(preds["ens"], SEG["num_classes"])
    json.dump(results, open(f"{OUT}/cityscapes_mini_expected.json", "w"), indent=1)


# ------------------------------------------------------------------ mining
def write_palette_label(path, ids):
    im = Image.fromarray(ids.astype(np.uint8), "P")
    im.putpalette([v for i in range(256) for v in (i, 255 - i, (3 * i) % 256)])
    im.save(path)


def gta5_mini():
    """8 GTA5-layout frames (96x80) with blocky Cityscapes-id labels (palette PNGs)."""
    root = f"{OUT}/gta5_mini"
    os.makedirs(f"{root}/images", exist_ok=True)
    os.makedirs(f"{root}/labels", exist_ok=True)
    g = np.random.default_rng(77)
    ids = [0, 7, 8, 11, 21, 23, 26]
    for i in range(8):
        name = f"{i + 1:05d}.png"
        test_image(96, 80, 40 + i).save(f"{root}/images/{name}")
        lab = np.array(g.choice(ids, size=(5, 6)), dtype=np.uint8).repeat(16, 0).repeat(16, 1)
        write_palette_label(f"{root}/labels/{name}", lab)
    return root


def class_embedding(m, tok, text):
    e = m.encode_text(tokenize(tok, [tpl.format(text) for tpl in PROMPTS["templates"]])).mean(0)
    return e / e.norm()


def replay_mining(m, tok, root, batch, crop, iters, seed, grid=3):
    """famix mine-styles, replayed with famix's RNG streams (tools/famix_ref.Rng)."""
    names = sorted(os.listdir(f"{root}/images"))
    n = len(names)
    per_epoch = n // batch
    perm = list(range(n))
    R.Rng.derive(seed, [R.SHUFFLE, 0]).shuffle(perm)
    v = m.visual
    v.set_output_stride(32)
    out = {"batches": []}
    tensors = {}
    for bi in range(per_epoch):
        imgs, dom = [], []
        for k in range(batch):
            idx = perm[bi * batch + k]
            im = Image.open(f"{root}/images/{names[idx]}").convert("RGB")
            lab = np.asarray(Image.open(f"{root}/labels/{names[idx]}"))
            lab = np.vectorize(lambda t: CS_TABLE.get(int(t), 255))(lab).astype(np.uint8)
            r = R.Rng.derive(seed, [R.AUGMENT, 0, idx])
            h, w = lab.shape
            top = r.below(h - crop + 1) if h > crop else 0
            left = r.below(w - crop + 1) if w > crop else 0
            imgs.append(im.crop((left, top, left + crop, top + crop)))
            lc = lab[top:top + crop, left:left + crop]
            c = crop // grid
            dom.append([R.dominant_class(torch.from_numpy(lc[i * c:(i + 1) * c, j * c:(j + 1) * c].astype(np.int64)))
                        for i in range(grid) for j in range(grid)])
        x = torch.cat([to_normalized(i) for i in imgs])
        with torch.no_grad():
            f1 = v.low(x)
        sel = R.select_patches(dom, grid)
        r = R.Rng.derive(seed, [R.STYLE_PROMPT, bi])
        prompts = []
        for _, _, _, cls in sel:
            if cls == 255:
                prompts.append(PROMPTS["ignore_class_prompt"])
            else:
                style = PROMPTS["random_styles"][r.below(len(PROMPTS["random_styles"]))]
                prompts.append(f"{style} {PROMPTS['class_names'][cls]}")
        with torch.no_grad():
            targets = torch.stack([class_embedding(m, tok, p) for p in prompts])
        mu, sd, losses = R.pin_mine(v, f1, sel, targets, grid, iters)
        out["batches"].append({"classes": [s[3] for s in sel], "patches": [s[0] for s in sel], "prompts": prompts,
                               "losses": losses, "dominant": dom})
        tensors[f"batch{bi}.mu"] = mu
        tensors[f"batch{bi}.sigma"] = sd
    return out, tensors


def mining_fixtures(tok):
    m = make_clip(CLIP_A, 100)
    root = gta5_mini()
    meta, tensors = replay_mining(m, tok, root, batch=4, crop=72, iters=5, seed=1)
    json.dump(meta, open(f"{OUT}/mining_expected.json", "w"), indent=1)
    # The reference's saved_params.pkl layout: '<class>_mu' / '<class>_std' → lists of (C,1,1) tensors.
    g = torch.Generator().manual_seed(5)
    ref = {}
    for c in PROMPTS["class_names"] + ["255"]:
        k = 2 if c in ("road", "255", "traffic light") else 0
        ref[f"{c}_mu"] = [torch.randn(16, 1, 1, generator=g) for _ in range(k)]
        ref[f"{c}_std"] = [torch.rand(16, 1, 1, generator=g) + 0.5 for _ in range(k)]
    with open(f"{OUT}/saved_params.pkl", "wb") as f:
        pickle.dump(ref, f)
    for c in ("road", "255", "traffic light"):
        tensors[f"ref.{c}.mu"] = torch.stack(ref[f"{c}_mu"]).view(2, 16)
        tensors[f"ref.{c}.sigma"] = torch.stack(ref[f"{c}_std"]).view(2, 16)
    save_file({k: v.contiguous() for k, v in tensors.items()}, f"{OUT}/mining_expected.safetensors")


# ------------------------------------------------------------------ training step with mixing
def mixing_fixtures(clip_a):
    seg = make_segmenter(clip_a)
    R.freeze_synthetic(seg)
    R.set_train_modes(seg)
    seg.classifier.aspp.project[3].p = 0.0
    g = torch.Generator().manual_seed(21)
    x = torch.randn(2, 3, 48, 48, generator=g)
    y = torch.randint(0, SEG["num_classes"], (2, 48, 48), generator=g)
    y[:, :16, :16] = 255
    c = 16  # layer1 channels of the width-4 backbone
    # A bank: 3 styles of class 0, 2 of class 3, 2 of the ignore class.
    bank_mu = {0: torch.randn(3, c, generator=g) * 0.5, 3: torch.randn(2, c, generator=g) * 0.5, 255: torch.randn(2, c, generator=g) * 0.5}
    bank_sd = {k: torch.rand(v.shape[0], c, generator=g) + 0.2 for k, v in bank_mu.items()}
    dom = [[R.dominant_class(y[b, i * 16:(i + 1) * 16, j * 16:(j + 1) * 16]) for i in range(3) for j in range(3)] for b in range(2)]
    # Empty classes use the ignore bank; picks are fixed numbers here.
    classes = [[d if d in bank_mu else 255 for d in row] for row in dom]
    picks = [[(b * 9 + k) % bank_mu[classes[b][k]].shape[0] for k in range(9)] for b in range(2)]
    s = torch.distributions.Beta(0.1, 0.1).sample((2, c, 1, 1))
    exp = {"x": x, "y": y, "s": s}
    style_mu = torch.stack([torch.stack([bank_mu[classes[b][k]][picks[b][k]] for k in range(9)]) for b in range(2)])
    style_sd = torch.stack([torch.stack([bank_sd[classes[b][k]][picks[b][k]] for k in range(9)]) for b in range(2)])
    exp["style_mu"], exp["style_sigma"] = style_mu, style_sd
    with torch.no_grad():
        f1 = seg.backbone.low(x)
        exp["restyled_mix"] = R.mix_styles(f1, classes, bank_mu, bank_sd, picks, s, 3, mix=True)
        exp["restyled_nomix"] = R.mix_styles(f1, classes, bank_mu, bank_sd, picks, s, 3, mix=False)
    params = [(n, p) for n, p in seg.named_parameters() if p.requires_grad]
    opt = torch.optim.SGD([{"params": [p for n, p in params if n.startswith("backbone")], "lr": 0.01},
                           {"params": [p for n, p in params if n.startswith("classifier")], "lr": 0.1}],
                          lr=0.1, momentum=0.9, weight_decay=1e-4)
    out = seg(x, restyle=lambda f: R.mix_styles(f, classes, bank_mu, bank_sd, picks, s, 3, mix=True))
    loss = F.cross_entropy(out, y, ignore_index=255, label_smoothing=0.1)
    opt.zero_grad()
    loss.backward()
    opt.step()
    exp["loss"] = loss.detach().reshape(1)
    for n, p in params:
        exp[f"after.{n}"] = p.detach().clone()
    save_file({k: v.contiguous() for k, v in exp.items()}, f"{OUT}/expected_mixing.safetensors")
    json.dump({"dominant": dom}, open(f"{OUT}/expected_mixing.json", "w"))


def main():
    os.makedirs(OUT, exist_ok=True)
    tok = open_clip_tokenizer()
    tokenizer_fixtures(tok)
    clip_a = clip_fixtures(tok)
    segmenter_fixtures(clip_a)
    data_fixtures(clip_a)
    mining_fixtures(tok)
    mixing_fixtures(clip_a)
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"fixtures written to {OUT}: {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
