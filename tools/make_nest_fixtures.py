"""Writes NesT parity fixtures for vitkit's tests from timm's `Nest` (PyPI timm).

Run in a venv with torch, timm, safetensors and numpy from PyPI (bench/.venv has them):

    bench/.venv/bin/python tools/make_nest_fixtures.py tests/fixtures

Cases: timm's NesT with symmetric max-pool padding (`nest_*`) and with TF-SAME padding
(`nest_*_jx`), three levels; and a four-level CIFAR-style NesT with **multi-query attention**
(one key/value head shared by all query heads), which timm does not have: its attention is
`MultiQueryAttention` below, written from the paper's description (models.md §4.1), with
vitkit's parameter names `attn.q`, `attn.k`, `attn.v`, `attn.proj` and head-major merging. Every
parameter is perturbed (biases, norms, position embeddings), so each one matters. Saved per case:
- `<case>.weights.safetensors`: the `state_dict()` (timm's key names);
- `<case>.io.safetensors`: `pixel_values`, `labels` (as float), `logits`, `train_loss` (cross
  entropy), and `f32_gap.<name>`: PyTorch float32's relative L2 distance from the float64
  gradient, per parameter;
  `resized.<level>.pos_embed`: timm's `resize_pos_embed` of each level's embedding for the same
  model at twice the input size;
- `<case>.grads.safetensors`: the float64 gradient of that loss for every parameter (as f32).
"""
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.models.nest import Nest


class MultiQueryAttention(nn.Module):
    """Multi-query attention over the tokens of each block: q per head, one shared k and v."""

    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, self.head_dim)
        self.v = nn.Linear(dim, self.head_dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):  # x: [B, T, N, C]
        B, T, N, C = x.shape
        q = self.q(x).reshape(B, T, N, self.num_heads, self.head_dim).permute(0, 3, 1, 2, 4)  # B H T N dh
        k = self.k(x).unsqueeze(1)  # B 1 T N dh
        v = self.v(x).unsqueeze(1)
        attn = (q * self.head_dim ** -0.5) @ k.transpose(-2, -1)
        out = attn.softmax(-1) @ v  # B H T N dh
        out = out.permute(0, 2, 3, 1, 4).reshape(B, T, N, C)  # head-major channels
        return self.proj(out)


CASES = {
    # 16x16 input, 2x2 patches: an 8x8 token grid, 3 levels of 2x2-token blocks (16, 4, 1 blocks).
    "nest_small3": dict(img_size=16, patch_size=2, num_levels=3, embed_dims=(8, 16, 24), num_heads=(2, 2, 4),
                        depths=(1, 1, 2), pad_type="", batch=3, mq=False),
    "nest_small3_jx": dict(img_size=16, patch_size=2, num_levels=3, embed_dims=(8, 16, 24), num_heads=(2, 2, 4),
                           depths=(1, 1, 2), pad_type="same", batch=3, mq=False),
    # The CIFAR models' shape: one pixel per token, 4 levels of 2x2-token blocks, constant width,
    # multi-query attention, SAME pooling.
    "nest_mq4": dict(img_size=16, patch_size=1, num_levels=4, embed_dims=(12, 12, 12, 12), num_heads=(3, 3, 3, 3),
                     depths=(1, 1, 1, 1), pad_type="same", batch=2, mq=True),
}


def build(kw):
    kw = {k: v for k, v in kw.items() if k not in ("batch", "mq")}
    return Nest(num_classes=5, drop_path_rate=0.0, **kw)


def make_model(kw):
    model = build(kw)
    if kw["mq"]:
        for level, heads in zip(model.levels, kw["num_heads"]):
            for layer in level.transformer_encoder:
                dim = layer.norm1.weight.shape[0]
                layer.attn = MultiQueryAttention(dim, heads)
    return model


def make(name, kw, out_dir):
    torch.manual_seed(0)
    model = make_model(kw)
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.add_(0.1 * torch.randn_like(p))
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    x = torch.randn(kw["batch"], 3, kw["img_size"], kw["img_size"])
    labels = torch.arange(kw["batch"]) % 5
    model.eval()
    with torch.no_grad():
        logits = model(x)
    f32_gap = {}
    for dtype in (torch.float64, torch.float32):
        step = make_model(kw)
        step.load_state_dict(state)
        step = step.to(dtype).train()
        loss = F.cross_entropy(step(x.to(dtype)), labels)
        loss.backward()
        if dtype == torch.float64:
            truth = {k: p.grad for k, p in step.named_parameters()}
            train_loss = loss.detach().float().reshape(1)
        else:
            for k, p in step.named_parameters():
                t = truth[k]
                rel = (p.grad.double() - t).norm() / t.norm().clamp_min(1e-30)
                f32_gap[f"f32_gap.{k}"] = rel.float().reshape(1)
    grads = {k: g.float().contiguous() for k, g in truth.items()}
    # timm's resampling of every level's position embedding for the same model at twice the
    # input size (blocks of 2x2 tokens become 4x4), what `--img-size` must reproduce.
    from timm.models.nest import resize_pos_embed
    big = make_model({**kw, "img_size": 2 * kw["img_size"]})
    resized = {f"resized.{k}": resize_pos_embed(state[k], big.state_dict()[k]).contiguous()
               for k in state if k.endswith("pos_embed")}
    save_file(state, f"{out_dir}/{name}.weights.safetensors")
    save_file({"pixel_values": x.contiguous(), "labels": labels.float(), "logits": logits.contiguous(),
               "train_loss": train_loss, **f32_gap, **resized}, f"{out_dir}/{name}.io.safetensors")
    save_file(grads, f"{out_dir}/{name}.grads.safetensors")
    n = sum(p.numel() for p in model.parameters())
    worst = max(f32_gap.items(), key=lambda kv: kv[1].item())
    print(f"{name}: {n} parameters, logits {tuple(logits.shape)}, train loss {train_loss.item():.5f}, "
          f"PyTorch float32's worst gradient gap {worst[1].item():.2e} ({worst[0][8:]})")


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
    for name, kw in CASES.items():
        make(name, kw, out_dir)
    import timm
    for n in ["nest_tiny", "nest_small", "nest_base"]:
        print(f"{n}: {sum(p.numel() for p in timm.create_model(n).parameters()):,} parameters")


if __name__ == "__main__":
    main()
