"""Gradient parity fixture: timm's gradients of a cross-entropy loss for the vit_token fixture.

    .venv/bin/python tools/make_grad_fixture.py tests/fixtures

Loads tests/fixtures/vit_token.weights.safetensors into timm's VisionTransformer, runs the
input of vit_token.io.safetensors with labels [1, 3], and saves d(mean CE)/d(param) for every
parameter under its timm name (PyTorch layouts) in vit_token.grads.safetensors.
"""
import sys

import torch
from safetensors.torch import load_file, save_file
from timm.models.vision_transformer import VisionTransformer


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=5)
    model.load_state_dict(load_file(f"{out_dir}/vit_token.weights.safetensors"))
    model.train()
    x = load_file(f"{out_dir}/vit_token.io.safetensors")["pixel_values"]
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([1, 3]))
    loss.backward()
    grads = {name: p.grad.contiguous() for name, p in model.named_parameters()}
    grads["loss"] = loss.detach().reshape(1)
    save_file(grads, f"{out_dir}/vit_token.grads.safetensors")
    print("loss", loss.item(), "grads", len(grads) - 1)


if __name__ == "__main__":
    main()
