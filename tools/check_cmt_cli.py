"""End-to-end check of `vitkit infer --source official` against the official CMT code, as a user
would run it, on the full-size presets with random weights (nothing is downloaded):

    bench/.venv/bin/python tools/check_cmt_cli.py target/release/vitkit /tmp/cmt_cli [cmt_ti cmt_s ...]

For each model it saves the official `state_dict()` (BatchNorm statistics perturbed) as
safetensors, runs `vitkit infer` on a random batch, and prints max |Δ| of the logits and of the
pooled features; then checks that a file with a key removed is refused, naming the key.
"""
import os
import subprocess
import sys
import warnings

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "ref", "cmt"))
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import cmt  # noqa: E402

SIZES = {"cmt_ti": 160, "cmt_xs": 192, "cmt_s": 224, "cmt_b": 256}


def main():
    vitkit, work = sys.argv[1], sys.argv[2]
    names = sys.argv[3:] or ["cmt_ti", "cmt_s"]
    os.makedirs(work, exist_ok=True)
    torch.manual_seed(0)
    print("| model | input | max |Δ| logits | max |Δ| pooled features |")
    print("|---|---|---|---|")
    for name in names:
        size = SIZES[name]
        model = getattr(cmt, name)(img_size=size)
        with torch.no_grad():
            for key, b in model.named_buffers():
                if key.endswith("running_mean"):
                    b.copy_(0.1 * torch.randn_like(b))
                elif key.endswith("running_var"):
                    b.copy_(0.5 + torch.rand_like(b))
        model.eval()
        weights = f"{work}/{name}.official.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            pre = model.forward_features(x)
            logits = model.head(pre)
        inp, out = f"{work}/{name}.in.safetensors", f"{work}/{name}.out.safetensors"
        save_file({"pixel_values": x.contiguous()}, inp)
        subprocess.run([vitkit, "infer", "--model", name, "--weights", weights, "--source", "official",
                        "--input", inp, "--output", out], check=True, stdout=subprocess.DEVNULL)
        got = load_file(out)
        dl = (got["logits"] - logits).abs().max().item()
        dp = (got["pre_logits"] - pre).abs().max().item()
        print(f"| {name} | {size}x{size} | {dl:.2e} | {dp:.2e} |")
    # A file with a key missing is refused, the key named.
    state = load_file(weights)
    del state["blocks_a.0.attn.sr.1.running_var"]
    broken = f"{work}/broken.safetensors"
    save_file(state, broken)
    r = subprocess.run([vitkit, "infer", "--model", names[-1], "--weights", broken, "--source", "official",
                        "--input", inp, "--output", f"{work}/broken.out.safetensors"], capture_output=True, text=True)
    assert r.returncode != 0 and "blocks_a.0.attn.sr.1.running_var" in r.stderr, r.stderr
    print("missing key refused:", r.stderr.strip().splitlines()[-1][:160])


if __name__ == "__main__":
    main()
