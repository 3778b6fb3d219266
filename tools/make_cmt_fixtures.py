"""Writes CMT parity fixtures for vitkit's tests from the official code (`../shared/ref/cmt/cmt.py`).

Run in a venv with torch, timm, safetensors and numpy from PyPI (bench/.venv has them):

    bench/.venv/bin/python tools/make_cmt_fixtures.py tests/fixtures

For each case it builds the official `CMT` with random (seeded) weights, perturbs every parameter
and BatchNorm buffer that starts at zero or one (biases, norms, running statistics, the batch
counter) so each one matters, and saves:
- `<case>.weights.safetensors`: the `state_dict()` (official key names, `num_batches_tracked`
  int64 scalars included);
- `<case>.io.safetensors`: `pixel_values`, `labels` (as float), `logits` in evaluation mode
  (running statistics), `train_loss`, the cross-entropy loss in training mode (batch
  statistics), and `after.<buffer>`: every BatchNorm buffer after that training forward;
- `<case>.grads.safetensors`: the gradient of that loss for every parameter, computed in float64
  (the truth, rounded to float32), with `f32_gap.<name>` in the io file: PyTorch float32's own
  relative L2 distance from it, per parameter.
"""
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "shared", "ref", "cmt"))
import cmt  # noqa: E402  (the official model code, unchanged)

CASES = {
    # All four stages at a small input: 64x64 -> maps 16, 8, 4, 2 with reductions 8, 4, 2, 1.
    "cmt_small": dict(img_size=64, num_classes=10, embed_dims=[16, 32, 48, 64], stem_channel=8, fc_dim=96,
                      num_heads=[1, 2, 4, 8], mlp_ratios=[2.5, 3.0, 3.6, 4.0], depths=[1, 1, 2, 1],
                      sr_ratios=[8, 4, 2, 1], batch=4),
    # cmt_ti's geometry at 160 (stem stride 2, depths 2-2-10-2, heads 1-2-4-8, reductions 8-4-2-1,
    # mlp ratio 3.6, fc_dim 1280) with narrower stages (16-32-48-64 instead of 46-92-184-368) to
    # keep the committed files small.
    "cmt_ti_narrow": dict(img_size=160, num_classes=10, embed_dims=[16, 32, 48, 64], stem_channel=16, fc_dim=1280,
                          num_heads=[1, 2, 4, 8], mlp_ratios=[3.6] * 4, depths=[2, 2, 10, 2],
                          sr_ratios=[8, 4, 2, 1], batch=2),
}


def perturb(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("relative_pos"):
                continue  # already N(0, 1)
            p.add_(0.05 * torch.randn_like(p))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn_like(b))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand_like(b))
            elif name.endswith("num_batches_tracked"):
                b.fill_(7)


def make(name, kwargs, out_dir):
    kwargs = dict(kwargs)
    batch = kwargs.pop("batch")
    torch.manual_seed(0)
    model = cmt.CMT(qkv_bias=True, dp=0.0, **kwargs)
    perturb(model)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    x = torch.randn(batch, 3, kwargs["img_size"], kwargs["img_size"])
    labels = torch.arange(batch) % kwargs["num_classes"]
    model.eval()
    with torch.no_grad():
        logits = model(x)
    # The training step in float64 (the reference gradients) and in float32 (to record how far
    # PyTorch's own float32 lands from them: some gradients are small sums of large cancelling
    # terms, e.g. stage a's norm1 bias, whose key/value path a training-mode BatchNorm cancels).
    grads, f32_gap = {}, {}
    for dtype in (torch.float64, torch.float32):
        step = cmt.CMT(qkv_bias=True, dp=0.0, **kwargs)
        step.load_state_dict(state)
        step = step.to(dtype).train()
        loss = F.cross_entropy(step(x.to(dtype)), labels)
        loss.backward()
        if dtype == torch.float64:
            truth = {k: p.grad for k, p in step.named_parameters()}
            grads = {k: g.float().contiguous() for k, g in truth.items()}
            train_loss = loss.detach().float().reshape(1)
            after = {f"after.{k}": v.detach().clone().float().reshape(-1).contiguous()
                     for k, v in step.state_dict().items()
                     if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
        else:
            for k, p in step.named_parameters():
                t = truth[k]
                rel = (p.grad.double() - t).norm() / t.norm().clamp_min(1e-30)
                f32_gap[f"f32_gap.{k}"] = rel.float().reshape(1)
    loss = train_loss
    save_file(state, f"{out_dir}/{name}.weights.safetensors")
    save_file({"pixel_values": x.contiguous(), "labels": labels.float(), "logits": logits.contiguous(),
               "train_loss": train_loss, **after, **f32_gap}, f"{out_dir}/{name}.io.safetensors")
    save_file(grads, f"{out_dir}/{name}.grads.safetensors")
    n = sum(p.numel() for p in model.parameters())
    # (gradients that are zero in theory have huge relative gaps: left out here)
    worst = max(((k, v) for k, v in f32_gap.items() if v.item() < 1), key=lambda kv: kv[1].item())
    print(f"{name}: {n} parameters, logits {tuple(logits.shape)}, train loss {loss.item():.5f}, "
          f"PyTorch float32's worst gradient gap {worst[1].item():.2e} ({worst[0][8:]})")


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
    for name, kwargs in CASES.items():
        make(name, kwargs, out_dir)
    for fn, size in [(cmt.cmt_ti, 160), (cmt.cmt_xs, 192), (cmt.cmt_s, 224), (cmt.cmt_b, 256)]:
        m = fn(img_size=size)
        print(f"{fn.__name__} @{size}: {sum(p.numel() for p in m.parameters()):,} parameters")


if __name__ == "__main__":
    main()
