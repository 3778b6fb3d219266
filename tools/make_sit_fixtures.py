"""Writes SiT parity fixtures for vitkit's tests: a SiT v1 model built from timm's ViT parts
(PatchEmbed, Block) as models.md §2.1 describes it, the losses of §2.3 and the corruptions of §2.2.

Run in a venv with torch, timm, safetensors and numpy from PyPI (bench/.venv has them):

    bench/.venv/bin/python tools/make_sit_fixtures.py tests/fixtures

Files:
- `sit_pretext.weights.safetensors`: a pretext-mode model's `state_dict()` under the official
  names (`rot_token`, `contrastive_token`, `pos_embed`, `patch_embed.proj`, `blocks.*`, `norm`,
  `rot_head`, `contrastive_head`, `convTrans`, `rot_w`, `contrastive_w`, `recons_w`), every
  parameter perturbed so each one matters;
  `sit_pretext.io.safetensors`: `clean` (two views, rotated), `corrupted`, `rotations`,
  `rotation`, `contrastive`, `reconstruction` (eval outputs of `corrupted`), the three task losses
  `losses`, `train_loss` (the uncertainty-weighted total), `f32_gap.<name>`;
  `resized_pos_embed`: the official `resize_pos_embed` of `pos_embed` to a 6x6 grid (bilinear);
  `sit_pretext.grads.safetensors`: the float64 gradient of `train_loss` for every parameter.
- `sit_classify.*`: the same backbone with two 5-class heads: `pixel_values`, `rot_logits`,
  `contrastive_logits`, `logits` (their mean).
- `sit_losses.safetensors`: NT-Xent (the official `ContrastiveLoss`, τ = 0.5) of `z1`, `z2`;
  the uncertainty sum of `task_losses` and `s`; `rot90.<r>` rotations of `image`.
- `sit_corrupt.safetensors`: `images` [4, 3, 20, 20], a corruption `plan` (rows: image, kind
  0 gray / 1 blur / 2 noise / 3 copy, r0, r1, c0, c1, kernel or source image, sigma), the `noise`
  values consumed in order, and `corrupted`, applied with torch (blur: a Gaussian of kornia's
  formula by conv2d with reflect padding of the block alone).
"""
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block


class SiT(nn.Module):
    def __init__(self, img=12, patch=3, chans=3, dim=24, depth=2, heads=2, classes=None, contrastive=10):
        super().__init__()
        self.patch_embed = PatchEmbed(img, patch, chans, dim)
        n = self.patch_embed.num_patches
        self.grid = img // patch
        self.rot_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.contrastive_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 2, dim))
        self.blocks = nn.Sequential(*[Block(dim, heads, 4.0, qkv_bias=True,
                                            norm_layer=lambda d, **kw: nn.LayerNorm(d, eps=1e-6, **kw)) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pretext = classes is None
        self.rot_head = nn.Linear(dim, 4 if self.pretext else classes)
        self.contrastive_head = nn.Linear(dim, contrastive if self.pretext else classes)
        if self.pretext:
            self.convTrans = nn.ConvTranspose2d(dim, chans, kernel_size=patch, stride=patch)
            self.rot_w = nn.Parameter(torch.tensor([1.0]))
            self.contrastive_w = nn.Parameter(torch.tensor([1.0]))
            self.recons_w = nn.Parameter(torch.tensor([1.0]))

    def forward(self, x):
        B = x.shape[0]
        x = self.patch_embed(x)
        x = torch.cat([self.rot_token.expand(B, -1, -1), self.contrastive_token.expand(B, -1, -1), x], 1)
        x = self.norm(self.blocks(x + self.pos_embed))
        rot, con = self.rot_head(x[:, 0]), self.contrastive_head(x[:, 1])
        if not self.pretext:
            return rot, con
        rec = x[:, 2:].transpose(1, 2).unflatten(2, (self.grid, self.grid))
        return rot, con, self.convTrans(rec)


def nt_xent(a, b, t=0.5):
    """The official ContrastiveLoss (losses.py), batch size from the inputs."""
    n = a.shape[0]
    z = torch.cat([F.normalize(a, dim=1), F.normalize(b, dim=1)], 0)
    sim = F.cosine_similarity(z.unsqueeze(1), z.unsqueeze(0), dim=2)
    pos = torch.cat([torch.diag(sim, n), torch.diag(sim, -n)])
    mask = (~torch.eye(2 * n, dtype=bool)).to(sim.dtype)
    denom = (mask * torch.exp(sim / t)).sum(1)
    return (-torch.log(torch.exp(pos / t) / denom)).sum() / (2 * n)


def weighted(losses, s, a=(1.0, 1.0, 0.5)):
    a = torch.tensor(a, dtype=s.dtype)
    return (torch.exp(-a * s) * losses + 0.5 * s).sum()


def pretext_loss(model, corrupted, clean, rotations):
    rot, con, rec = model(corrupted)
    n = corrupted.shape[0] // 2
    losses = torch.stack([F.cross_entropy(rot, rotations), nt_xent(con[:n], con[n:]), F.l1_loss(rec, clean)])
    s = torch.cat([model.rot_w, model.contrastive_w, model.recons_w])
    return weighted(losses, s), losses, (rot, con, rec)


def perturb(model):
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.add_(0.1 * torch.randn_like(p))


def make_models(out):
    torch.manual_seed(0)
    model = SiT()
    perturb(model)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    clean = torch.randn(6, 3, 12, 12)  # two views of 3 images
    corrupted = clean + 0.5 * torch.randn_like(clean)
    rotations = torch.tensor([0, 1, 2, 3, 1, 2])
    model.eval()
    with torch.no_grad():
        total, losses, (rot, con, rec) = pretext_loss(model, corrupted, clean, rotations)
    f32_gap = {}
    for dtype in (torch.float64, torch.float32):
        m = SiT().to(dtype)
        m.load_state_dict(state)
        loss, _, _ = pretext_loss(m, corrupted.to(dtype), clean.to(dtype), rotations)
        loss.backward()
        if dtype == torch.float64:
            truth = {k: p.grad for k, p in m.named_parameters()}
        else:
            for k, p in m.named_parameters():
                t = truth[k]
                f32_gap[f"f32_gap.{k}"] = ((p.grad.double() - t).norm() / t.norm().clamp_min(1e-30)).float().reshape(1)
    save_file(state, f"{out}/sit_pretext.weights.safetensors")
    # The official `resize_pos_embed` (vision_transformer_SiT.py): both prefix tokens kept, the
    # 4x4 grid resampled bilinearly to 6x6 (the model at 18x18 inputs).
    pos = state["pos_embed"]
    grid = pos[0, 2:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(6, 6), mode="bilinear").permute(0, 2, 3, 1).reshape(1, 36, -1)
    resized = torch.cat([pos[:, :2], grid], 1).contiguous()
    save_file({"resized_pos_embed": resized, "clean": clean, "corrupted": corrupted, "rotations": rotations.float(), "rotation": rot,
               "contrastive": con, "reconstruction": rec.contiguous(), "losses": losses.float(),
               "train_loss": total.reshape(1), **f32_gap}, f"{out}/sit_pretext.io.safetensors")
    save_file({k: g.float().contiguous() for k, g in truth.items()}, f"{out}/sit_pretext.grads.safetensors")
    print(f"sit_pretext: {sum(p.numel() for p in model.parameters())} parameters, losses {losses.tolist()}, "
          f"total {total.item():.5f}")

    classifier = SiT(classes=5)
    perturb(classifier)
    x = torch.randn(3, 3, 12, 12)
    with torch.no_grad():
        r, c = classifier.eval()(x)
    save_file({k: v.contiguous() for k, v in classifier.state_dict().items()}, f"{out}/sit_classify.weights.safetensors")
    save_file({"pixel_values": x, "rot_logits": r, "contrastive_logits": c, "logits": (r + c) / 2},
              f"{out}/sit_classify.io.safetensors")


def make_losses(out):
    torch.manual_seed(1)
    z1, z2 = torch.randn(5, 10), torch.randn(5, 10)
    task_losses, s = torch.rand(3) * 3, torch.randn(3)
    image = torch.arange(2 * 5 * 5, dtype=torch.float32).reshape(2, 5, 5)
    rot = {f"rot90.{r}": torch.rot90(image, k, dims=(1, 2)).contiguous() for r, k in enumerate([0, -1, 2, 1])}
    save_file({"z1": z1, "z2": z2, "nt_xent": nt_xent(z1, z2).reshape(1), "task_losses": task_losses, "s": s,
               "weighted": weighted(task_losses, s).reshape(1), "image": image, **rot},
              f"{out}/sit_losses.safetensors")


def gaussian(k, sigma):
    x = torch.arange(k, dtype=torch.float64) - k // 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    return (g / g.sum()).float()


def region(rng, h, w, mh, mw):
    tol = max(1, h // 20)
    r0, c0 = rng.integers(0, h - tol), rng.integers(0, w - tol)
    r1 = min(rng.integers(tol, max(mh, tol + 1)) + r0, h)
    c1 = min(rng.integers(tol, max(mw, tol + 1)) + c0, w)
    return int(r0), int(r1), int(c0), int(c1)


def make_corruptions(out):
    rng = np.random.default_rng(3)
    n, c, h, w = 4, 3, 20, 20
    images = torch.tensor(rng.standard_normal((n, c, h, w)), dtype=torch.float32)
    plan, noise = [], []
    for i in range(n):
        plan.append([i, 0, *region(rng, h, w, h, w), 0, 0])
        while True:  # torch's reflect padding needs the block wider than half the kernel
            k = 2 * (int(rng.integers(3, 16)) // 2) + 1
            r0, r1, c0, c1 = region(rng, h, w, h, w)
            if min(r1 - r0, c1 - c0) > k // 2:
                break
        plan.append([i, 1, r0, r1, c0, c1, k, float(rng.random() * 5 + 0.1)])
        for kind in (2, 3):
            budget = rng.uniform(0, 0.3) * h * w
            covered = 0
            src = int(rng.integers(0, n))
            if kind == 3 and src == i:
                continue
            while covered < budget:
                r0, r1, c0, c1 = region(rng, h, w, h // 4, w // 4)
                plan.append([i, kind, r0, r1, c0, c1, src if kind == 3 else 0, 0])
                covered += (r1 - r0) * (c1 - c0)
    x = images.clone()
    for i, kind, r0, r1, c0, c1, extra, sigma in plan:
        block = x[i, :, r0:r1, c0:c1]
        if kind == 0:
            x[i, :, r0:r1, c0:c1] = block.mean(0, keepdim=True).expand_as(block)
        elif kind == 1:
            g = gaussian(extra, sigma)
            kernel = (g[:, None] * g[None, :]).expand(c, 1, extra, extra)
            padded = F.pad(block.unsqueeze(0), [extra // 2] * 4, mode="reflect")
            x[i, :, r0:r1, c0:c1] = F.conv2d(padded, kernel, groups=c)[0]
        elif kind == 2:
            values = torch.tensor(rng.standard_normal(block.numel()), dtype=torch.float32)
            noise.append(values)
            x[i, :, r0:r1, c0:c1] = values.reshape(block.shape)
        else:
            x[i, :, r0:r1, c0:c1] = x[extra, :, r0:r1, c0:c1]
    save_file({"images": images, "plan": torch.tensor(plan, dtype=torch.float32), "noise": torch.cat(noise),
               "corrupted": x.contiguous()}, f"{out}/sit_corrupt.safetensors")
    print(f"sit_corrupt: {len(plan)} corruptions")


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
    make_models(out)
    make_losses(out)
    make_corruptions(out)
    import timm
    for name, (d, depth, heads) in {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12)}.items():
        m = timm.create_model(f"vit_{name}_patch16_224")
        # SiT: no class token, two extra tokens (and position rows), two heads of 1000 classes.
        n = sum(p.numel() for p in m.parameters()) - d + 2 * d + d + (d * 1000 + 1000)
        print(f"sit_{name}_patch16_224 (classifier): {n:,} parameters")


if __name__ == "__main__":
    main()
