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


def make_resampled(out_dir):
    """vit_token's weights run at 48x32 (a 6x4 grid instead of 4x4), the position embedding
    resampled as timm's checkpoint_filter_fn does (bicubic, antialias)."""
    from safetensors.torch import load_file
    from timm.layers import resample_abs_pos_embed

    state = load_file(f"{out_dir}/vit_token.weights.safetensors")
    state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], new_size=(6, 4), num_prefix_tokens=1)
    kwargs = dict(CASES["vit_token"], img_size=(48, 32))
    model = VisionTransformer(**kwargs).eval()
    model.load_state_dict(state)
    torch.manual_seed(1)
    x = torch.randn(2, 3, 48, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        logits = model.forward_head(feats)
    save_file({"pixel_values": x.contiguous(), "logits": logits.contiguous(), "pre_logits": pre.contiguous()},
              f"{out_dir}/vit_token_48x32.io.safetensors")
    print("vit_token_48x32: resampled pos_embed", tuple(state["pos_embed"].shape))


def make_hf(out_dir):
    """A Hugging Face ViTForImageClassification with the same shapes (LayerNorm eps 1e-12)."""
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=192,
                       image_size=32, patch_size=8, num_labels=5)
    model = ViTForImageClassification(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(pixel_values=x).logits
        pre = model.vit(pixel_values=x).last_hidden_state[:, 0]
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, f"{out_dir}/hf_vit.weights.safetensors")
    save_file({"pixel_values": x.contiguous(), "logits": logits.contiguous(), "pre_logits": pre.contiguous()},
              f"{out_dir}/hf_vit.io.safetensors")
    print("hf_vit:", sum(p.numel() for p in model.parameters()), "parameters, eps", config.layer_norm_eps)
    # The same weights under the key names of transformers 4.x, which most Hub checkpoints carry.
    v4 = {}
    for k, v in model.state_dict().items():
        for new, old in [("vit.layers.", "vit.encoder.layer."), (".attention.q_proj.", ".attention.attention.query."),
                         (".attention.k_proj.", ".attention.attention.key."), (".attention.v_proj.", ".attention.attention.value."),
                         (".attention.o_proj.", ".attention.output.dense."), (".mlp.fc1.", ".intermediate.dense."),
                         (".mlp.fc2.", ".output.dense.")]:
            k = k.replace(new, old)
        v4[k] = v.contiguous()
    save_file(v4, f"{out_dir}/hf_vit_v4names.weights.safetensors")


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
    for name, kwargs in CASES.items():
        make(name, kwargs, out_dir)
    make_resampled(out_dir)
    make_hf(out_dir)
    base = timm.create_model("vit_base_patch16_224", pretrained=False)
    print("timm vit_base_patch16_224 parameters:", sum(p.numel() for p in base.parameters()))


if __name__ == "__main__":
    main()
