"""Writes small timm ViT parity fixtures for vitkit's tests.

Run in a venv with torch, timm, safetensors and numpy from PyPI:

    python3 -m venv .venv && .venv/bin/pip install torch timm safetensors numpy
    .venv/bin/python tools/make_vit_fixtures.py tests/fixtures

For each case it saves the model's state_dict (timm key names, PyTorch layouts) as
`<case>.weights.safetensors`, and an input batch with timm's outputs as `<case>.io.safetensors`
(`pixel_values` [B,3,H,W], `logits` [B,K], `pre_logits` [B,D]). Weights are random (seeded) and
perturbed away from timm's zero biases / unit norms so every parameter matters.
"""
import sys

import timm
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

CASES = {
    # name: (constructor kwargs)
    "vit_token": dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=5, global_pool="token"),
    "vit_avg": dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=5, global_pool="avg"),
}


def make(name, kwargs, out_dir):
    torch.manual_seed(0)
    model = VisionTransformer(**kwargs).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(2, 3, kwargs["img_size"], kwargs["img_size"])
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        logits = model.forward_head(feats)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, f"{out_dir}/{name}.weights.safetensors")
    save_file({"pixel_values": x.contiguous(), "logits": logits.contiguous(), "pre_logits": pre.contiguous()}, f"{out_dir}/{name}.io.safetensors")
    print(f"{name}: {sum(p.numel() for p in model.parameters())} parameters, logits {tuple(logits.shape)}")


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
    for name, kwargs in CASES.items():
        make(name, kwargs, out_dir)
    base = timm.create_model("vit_base_patch16_224", pretrained=False)
    print("timm vit_base_patch16_224 parameters:", sum(p.numel() for p in base.parameters()))


if __name__ == "__main__":
    main()
