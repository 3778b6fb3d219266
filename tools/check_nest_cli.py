"""End-to-end check of `vitkit infer --source timm` against timm's NesT, as a user would run it,
on the full-size presets with random weights (every parameter perturbed; nothing is downloaded):

    bench/.venv/bin/python tools/check_nest_cli.py target/release/vitkit /tmp/nest_cli [nest_tiny nest_tiny_jx ...]

For each model it saves timm's `state_dict()` as safetensors, runs `vitkit infer` on a random batch
and prints max |Δ| of the logits and of the pooled features; then the same file at 256x256
(`--img-size 256`: every level's position embedding resampled, as timm's `resize_pos_embed`)
against timm's model built at 256 with the resampled embeddings.
"""
import subprocess
import sys

import timm
import torch
from safetensors.torch import load_file, save_file
from timm.models.nest import resize_pos_embed


def run(vitkit, name, weights, x, work, extra=()):
    inp, out = f"{work}/{name}.in.safetensors", f"{work}/{name}.out.safetensors"
    save_file({"pixel_values": x.contiguous()}, inp)
    subprocess.run([vitkit, "infer", "--model", name, "--weights", weights, "--source", "timm",
                    "--input", inp, "--output", out, *extra], check=True, stdout=subprocess.DEVNULL)
    return load_file(out)


def main():
    vitkit, work = sys.argv[1], sys.argv[2]
    names = sys.argv[3:] or ["nest_tiny", "nest_tiny_jx"]
    import os

    os.makedirs(work, exist_ok=True)
    torch.manual_seed(0)
    print("| model | input | max |Δ| logits | max |Δ| pooled features |")
    print("|---|---|---|---|")
    for name in names:
        model = timm.create_model(name).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.02 * torch.randn_like(p))
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        weights = f"{work}/{name}.safetensors"
        save_file(state, weights)
        for size in (224, 256):
            ref = model
            if size != 224:
                ref = timm.create_model(name, img_size=size).eval()
                resized = dict(state)
                for k in state:
                    if k.endswith("pos_embed"):
                        resized[k] = resize_pos_embed(state[k], ref.state_dict()[k])
                ref.load_state_dict(resized)
            x = torch.randn(2, 3, size, size)
            with torch.no_grad():
                pre = ref.forward_head(ref.forward_features(x), pre_logits=True)
                logits = ref.head(pre)
            got = run(vitkit, name, weights, x, work, ["--img-size", str(size)])
            dl = (got["logits"] - logits).abs().max().item()
            dp = (got["pre_logits"] - pre).abs().max().item()
            print(f"| {name} | {size}x{size} | {dl:.2e} | {dp:.2e} |")


if __name__ == "__main__":
    main()
