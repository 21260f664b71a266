"""famix's PyTorch twin, written from docs/src/design.md (not from the reference code).

It generates the parity fixtures (tools/make_fixtures.py) and is the PyTorch side of
benchmarks (tools/bench_torch.py). Parameter names follow OpenAI CLIP / the FAMix
reference checkpoints so the same state dicts load on both sides.
"""
import math
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# ---------------------------------------------------------------- image tower
class Bottleneck(nn.Module):
    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.stride = stride  # nominal; the plan below may turn it into dilation
        self.run_stride = stride
        self.dilation = 1
        self.downsample = None
        if stride > 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(OrderedDict([
                ("0", nn.Conv2d(inplanes, planes * 4, 1, bias=False)),
                ("1", nn.BatchNorm2d(planes * 4)),
            ]))

    def forward(self, x):
        d = self.dilation
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(F.conv2d(out, self.conv2.weight, None, 1, d, d)))
        if self.run_stride > 1:
            out = F.avg_pool2d(out, self.run_stride)
        out = self.bn3(self.conv3(out))
        idt = x
        if self.downsample is not None:
            if self.run_stride > 1:
                idt = F.avg_pool2d(idt, self.run_stride)
            idt = self.downsample(idt)
        return F.relu(out + idt)


class AttentionPool2d(nn.Module):
    def __init__(self, grid, embed_dim, heads, output_dim):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(grid * grid + 1, embed_dim) / embed_dim ** 0.5)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim)
        self.heads = heads

    def forward(self, x):
        x = x.flatten(2).permute(2, 0, 1)  # (HW, N, C)
        x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)
        x = x + self.positional_embedding[:, None, :]
        out, _ = F.multi_head_attention_forward(
            query=x, key=x, value=x, embed_dim_to_check=x.shape[-1], num_heads=self.heads,
            q_proj_weight=self.q_proj.weight, k_proj_weight=self.k_proj.weight,
            v_proj_weight=self.v_proj.weight, in_proj_weight=None,
            in_proj_bias=torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]),
            bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
            out_proj_weight=self.c_proj.weight, out_proj_bias=self.c_proj.bias,
            use_separate_proj_weight=True, training=False, need_weights=False)
        return out[0]


class ModifiedResNet(nn.Module):
    def __init__(self, layers, width, output_dim=None, heads=None, input_resolution=224, os=32):
        super().__init__()
        self.width = width
        self.conv1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        inpl = width
        stages = []
        for i, (planes, n) in enumerate(zip([width, width * 2, width * 4, width * 8], layers)):
            blocks = []
            for b in range(n):
                blocks.append(Bottleneck(inpl, planes, 2 if (b == 0 and i > 0) else 1))
                inpl = planes * 4
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.attnpool = None
        if output_dim is not None:
            self.attnpool = AttentionPool2d(input_resolution // 32, width * 32, heads or width * 32 // 64, output_dim)
        self.set_output_stride(os)

    def set_output_stride(self, os):
        # docs/src/design.md §1: dilated stage = first block dilation 1 (no stride), middle blocks the
        # previous dilation, last block the new one.
        dilate = {8: [False, True, True], 16: [False, False, True], 32: [False, False, False]}[os]
        dilation = 1
        for i, stage in enumerate([self.layer1, self.layer2, self.layer3, self.layer4]):
            stride = 1 if i == 0 else 2
            prev = dilation
            if i > 0 and dilate[i - 1]:
                dilation *= stride
                stride = 1
            n = len(stage)
            for b, blk in enumerate(stage):
                blk.run_stride = stride if b == 0 else 1
                blk.dilation = 1 if b == 0 else (dilation if b == n - 1 else prev)

    def stem(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        return F.avg_pool2d(x, 2)

    def low(self, x):
        return self.layer1(self.stem(x))

    def high(self, f1):
        return self.layer4(self.layer3(self.layer2(f1)))

    def forward(self, x):
        return self.attnpool(self.high(self.low(x)))


# ---------------------------------------------------------------- text tower
def text_heads(width):
    return width // 64 if width >= 64 else max(1, width // 16)


class ResBlock(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, width * 4)), ("c_proj", nn.Linear(width * 4, width))]))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x, mask):
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        h = self.mlp.c_fc(self.ln_2(x))
        h = h * torch.sigmoid(1.702 * h)
        return x + self.mlp.c_proj(h)


class Transformer(nn.Module):
    def __init__(self, width, layers, heads):
        super().__init__()
        self.resblocks = nn.ModuleList([ResBlock(width, heads) for _ in range(layers)])


class CLIP(nn.Module):
    def __init__(self, vision_layers, vision_width, embed_dim, image_resolution=224,
                 text_width=None, text_layers=None, vocab=49408, context=77):
        super().__init__()
        self.visual = ModifiedResNet(vision_layers, vision_width, embed_dim, vision_width * 32 // 64,
                                     image_resolution, os=32)
        self.has_text = text_width is not None
        if self.has_text:
            self.token_embedding = nn.Embedding(vocab, text_width)
            self.positional_embedding = nn.Parameter(torch.randn(context, text_width) * 0.01)
            self.transformer = Transformer(text_width, text_layers, text_heads(text_width))
            self.ln_final = nn.LayerNorm(text_width)
            self.text_projection = nn.Parameter(torch.randn(text_width, embed_dim) / text_width ** 0.5)
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
            self.context = context

    def encode_image(self, x):
        return self.visual(x)

    def encode_text(self, tokens):
        x = self.token_embedding(tokens) + self.positional_embedding
        x = x.permute(1, 0, 2)
        L = tokens.shape[1]
        mask = torch.full((L, L), float("-inf")).triu_(1)
        for blk in self.transformer.resblocks:
            x = blk(x, mask)
        x = self.ln_final(x.permute(1, 0, 2))
        return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ self.text_projection

    def forward(self, x):  # for torch.jit.trace
        return self.encode_image(x)


def random_bn_stats(model, gen):
    """Non-trivial BN statistics so eval-mode BN is really exercised."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) * 0.5 + 0.75)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) * 0.5 + 0.75)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


# ---------------------------------------------------------------- segmenter
class ASPP(nn.Module):
    def __init__(self, cin, rates, ch):
        super().__init__()
        mods = [nn.Sequential(nn.Conv2d(cin, ch, 1, bias=False), nn.BatchNorm2d(ch), nn.ReLU())]
        for r in rates:
            mods.append(nn.Sequential(nn.Conv2d(cin, ch, 3, padding=r, dilation=r, bias=False), nn.BatchNorm2d(ch), nn.ReLU()))
        mods.append(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, ch, 1, bias=False), nn.BatchNorm2d(ch), nn.ReLU()))
        self.convs = nn.ModuleList(mods)
        self.project = nn.Sequential(nn.Conv2d(5 * ch, ch, 1, bias=False), nn.BatchNorm2d(ch), nn.ReLU(), nn.Dropout(0.1))

    def forward(self, x):
        outs = []
        for i, c in enumerate(self.convs):
            y = c(x)
            if i == len(self.convs) - 1:
                y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
            outs.append(y)
        return self.project(torch.cat(outs, 1))


class DeepLabHead(nn.Module):
    def __init__(self, cin, clow, num_classes, rates, aspp_ch=256, low_ch=48):
        super().__init__()
        self.project = nn.Sequential(nn.Conv2d(clow, low_ch, 1, bias=False), nn.BatchNorm2d(low_ch), nn.ReLU())
        self.aspp = ASPP(cin, rates, aspp_ch)
        self.classifier = nn.Sequential(
            nn.Conv2d(aspp_ch + low_ch, aspp_ch, 3, padding=1, bias=False), nn.BatchNorm2d(aspp_ch), nn.ReLU(),
            nn.Conv2d(aspp_ch, num_classes, 1))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward(self, low, high):
        low = self.project(low)
        x = self.aspp(high)
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(torch.cat([low, x], 1))


def aspp_rates(os):
    return [12, 24, 36] if os == 8 else [6, 12, 18]


class Segmenter(nn.Module):
    def __init__(self, layers, width, num_classes=19, os=16, aspp_ch=256, low_ch=48):
        super().__init__()
        self.backbone = ModifiedResNet(layers, width, None, None, 224, os)
        self.classifier = DeepLabHead(width * 32, width * 4, num_classes, aspp_rates(os), aspp_ch, low_ch)

    def set_output_stride(self, os):
        self.backbone.set_output_stride(os)
        for conv, r in zip(list(self.classifier.aspp.convs)[1:4], aspp_rates(os)):
            conv[0].padding = (r, r)
            conv[0].dilation = (r, r)

    def forward(self, x, restyle=None):
        f1 = self.backbone.low(x)
        if restyle is not None:
            f1 = restyle(f1)
        out = self.classifier(f1, self.backbone.high(f1))
        return F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)


def freeze_synthetic(model):
    """docs/src/design.md §4: everything before layer4's last block frozen (BN eval); head trains."""
    bb = model.backbone
    for p in bb.parameters():
        p.requires_grad_(False)
    for p in bb.layer4[-1].parameters():
        p.requires_grad_(True)


def set_train_modes(model):
    model.eval()
    model.backbone.layer4[-1].train()
    model.classifier.train()


# ---------------------------------------------------------------- styles
def calc_mean_std(feat, eps=1e-5):
    n, c = feat.shape[:2]
    var = feat.reshape(n, c, -1).var(dim=2) + eps
    return feat.reshape(n, c, -1).mean(dim=2).view(n, c, 1, 1), var.sqrt().view(n, c, 1, 1)


def split_patches(x, g):
    """(B, C, H, W) → (g*g, B, C, H/g, W/g), grid cells row-major."""
    _, _, h, w = x.shape
    ph, pw = h // g, w // g
    return torch.stack([x[:, :, i * ph:(i + 1) * ph, j * pw:(j + 1) * pw] for i in range(g) for j in range(g)])


def join_patches(p, g):
    rows = [torch.cat([p[i * g + j] for j in range(g)], dim=3) for i in range(g)]
    return torch.cat(rows, dim=2)


def dominant_class(label_patch):
    """Mode of a label patch; ties → smallest id (255 counts as a class)."""
    vals, counts = torch.unique(label_patch.flatten(), return_counts=True)
    best = counts.max()
    return int(vals[counts == best].min())


def mix_styles(f1, classes, bank_mu, bank_sigma, picks, s, g, mix=True):
    """Local style mixing (docs/src/design.md §4). classes[b][cell]; picks[b][cell] indexes the bank
    of that class (the caller resolved empty banks); s: (B, C, 1, 1)."""
    cells = split_patches(f1, g)
    out = []
    for k in range(g * g):
        p = cells[k]
        mu, sd = calc_mean_std(p)
        norm = (p - mu) / sd
        mu_t = torch.stack([bank_mu[classes[b][k]][picks[b][k]] for b in range(p.shape[0])]).view_as(mu)
        sd_t = torch.stack([bank_sigma[classes[b][k]][picks[b][k]] for b in range(p.shape[0])]).view_as(sd)
        if mix:
            mu_m = s * mu + (1 - s) * mu_t
            sd_m = s * sd + (1 - s) * sd_t
        else:
            mu_m, sd_m = mu_t, sd_t
        out.append(norm * sd_m + mu_m)
    return F.relu(join_patches(torch.stack(out), g))


# ---------------------------------------------------------------- famix's RNG
M64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
SHUFFLE, AUGMENT, STYLE_PROMPT, STYLE_PICK, MIX_BETA, TORCH_SEED = 1, 2, 3, 4, 5, 6


def _mix(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


class Rng:
    """SplitMix64, the generator famix derives all its random streams from."""

    def __init__(self, seed):
        self.state = seed & M64

    @staticmethod
    def derive(seed, parts):
        s = _mix((seed + GOLDEN) & M64)
        for p in parts:
            s = _mix(s ^ _mix((p + GOLDEN) & M64))
        return Rng(s)

    def next(self):
        self.state = (self.state + GOLDEN) & M64
        return _mix(self.state)

    def uniform(self):
        return (self.next() >> 11) * (1.0 / (1 << 53))

    def uniform_range(self, lo, hi):
        return lo + (hi - lo) * self.uniform()

    def below(self, n):
        return self.next() % n

    def shuffle(self, v):
        for i in range(len(v) - 1, 0, -1):
            j = self.below(i + 1)
            v[i], v[j] = v[j], v[i]


# ---------------------------------------------------------------- mining (docs/src/design.md §3)
def select_patches(dominant, grid):
    """First patch of each distinct class; patches ordered grid-cell-major, then image."""
    seen, out = set(), []
    for cell in range(grid * grid):
        for b, d in enumerate(dominant):
            if d[cell] not in seen:
                seen.add(d[cell])
                out.append((cell * len(dominant) + b, b, cell, d[cell]))
    return out


def pin_mine(visual, f1, selections, targets, grid, iters, lr=1.0):
    """Patch-wise PIN for one batch: returns mu, sigma (n, C) and the loss per iteration."""
    _, _, h, w = f1.shape
    ph, pw = h // grid, w // grid
    patches = torch.stack([f1[b, :, (c // grid) * ph:(c // grid + 1) * ph, (c % grid) * pw:(c % grid + 1) * pw]
                           for _, b, c, _ in selections]).detach()
    mu0, sd0 = calc_mean_std(patches)
    norm = (patches - mu0) / sd0
    mu = torch.nn.Parameter(mu0.clone())
    sd = torch.nn.Parameter(sd0.clone())
    opt = torch.optim.SGD([mu, sd], lr=lr, momentum=0.9, weight_decay=1e-4)
    res = visual.attnpool.positional_embedding.shape[0]
    grid_side = int(round((res - 1) ** 0.5)) * 8  # layer1 size for the CLIP grid
    losses = []
    for _ in range(iters):
        opt.zero_grad()
        x = F.relu(norm * sd + mu)
        x = F.adaptive_avg_pool2d(x, (grid_side, grid_side))
        e = visual.attnpool(visual.high(x))
        e = e / e.norm(dim=-1, keepdim=True).clone().detach()
        loss = (1 - torch.cosine_similarity(targets, e, dim=1)).mean()
        losses.append(loss.item())
        loss.backward()
        opt.step()
    n, c = mu.shape[:2]
    return mu.detach().view(n, c), sd.detach().view(n, c), losses
