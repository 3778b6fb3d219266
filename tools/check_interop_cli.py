"""End-to-end check of `vitkit import` / `vitkit infer` against timm and transformers, as a
user would run them, on full-size presets (random weights, so nothing is downloaded).

    .venv/bin/python tools/check_interop_cli.py target/release/vitkit /tmp/interop

Prints one row per case: model, source, resolution, max |Δ| of logits and of pooled features.
"""
import subprocess
import sys

import timm
import torch
from safetensors.torch import load_file, save_file


def run(cmd):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def compare(vitkit, work, name, weights, source, preset, img, ref_logits, ref_pre, x):
    inp, out = f"{work}/{name}.in.safetensors", f"{work}/{name}.out.safetensors"
    save_file({"pixel_values": x.contiguous()}, inp)
    cmd = [vitkit, "infer", "--weights", weights, "--source", source, "--model", preset, "--input", inp, "--output", out]
    if img:
        cmd += ["--img-size", str(img)]
    run(cmd)
    got = load_file(out)
    dl = (got["logits"] - ref_logits).abs().max().item()
    dp = (got["pre_logits"] - ref_pre).abs().max().item()
    print(f"| {preset} | {source} | {x.shape[-1]} | {dl:.2e} | {dp:.2e} |")


def main():
    vitkit, work = sys.argv[1], sys.argv[2]
    subprocess.run(["mkdir", "-p", work], check=True)
    torch.manual_seed(0)
    print("| model | source | resolution | max |Δ| logits | max |Δ| pre_logits |")
    print("|---|---|---|---|---|")

    # timm vit_tiny_patch16_224 at 224, and at 384 (position embedding resampled by both sides).
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    path = f"{work}/timm_vit_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        f = model.forward_features(x)
        compare(vitkit, work, "timm224", path, "timm", "vit_tiny_patch16_224", None, model.forward_head(f), model.forward_head(f, pre_logits=True), x)
    big = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=384).eval()
    state = load_file(path)
    from timm.models.vision_transformer import checkpoint_filter_fn
    big.load_state_dict(checkpoint_filter_fn(state, big))
    x = torch.randn(1, 3, 384, 384)
    with torch.no_grad():
        f = big.forward_features(x)
        compare(vitkit, work, "timm384", path, "timm", "vit_tiny_patch16_224", 384, big.forward_head(f), big.forward_head(f, pre_logits=True), x)

    # Hugging Face ViTForImageClassification with ViT-Ti/16 shapes.
    from transformers import ViTConfig, ViTForImageClassification
    hf = ViTForImageClassification(ViTConfig(hidden_size=192, num_hidden_layers=12, num_attention_heads=3,
                                             intermediate_size=768, num_labels=1000)).eval()
    path = f"{work}/hf_vit_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, path)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        compare(vitkit, work, "hf224", path, "hf", "vit_tiny_patch16_224", None, hf(pixel_values=x).logits,
                hf.vit(pixel_values=x).last_hidden_state[:, 0], x)

    # import writes a checkpoint that predict/eval/explain accept.
    run([vitkit, "import", "--from", "timm", "--model", "vit_tiny_patch16_224", f"{work}/timm_vit_tiny.safetensors",
         "--out", f"{work}/imported_tiny"])
    print("import: ok ->", f"{work}/imported_tiny")


if __name__ == "__main__":
    main()
