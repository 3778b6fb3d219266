"""Cross-check of `vitkit probe` in PyTorch: the same linear probe on the same frozen features.

    python tools/probe_check.py pixels DIR
        writes DIR/{train,test}_px.safetensors (Fashion-MNIST normalised as vitkit does,
        mean 0.286, std 0.353) and DIR/{train,test}_y.npy from the Debian package's files
    vitkit infer --checkpoint PROBE_RUN --input DIR/train_px.safetensors --output DIR/train_f.safetensors
    vitkit infer --checkpoint PROBE_RUN --input DIR/test_px.safetensors --output DIR/test_f.safetensors
    python tools/probe_check.py fit DIR [--epochs 30] [--raw]
        trains two linear heads (one per prefix token: the two halves of `pre_logits`) with
        AdamW, warmup and cosine, on standardised features (raw with --raw), and prints the
        test top-1 of the mean of their logits

Any SiT probe run serves as PROBE_RUN: its backbone is the pretraining run's, frozen.
"""

import argparse
import gzip
import math

import numpy as np
import torch
from safetensors.torch import load_file, save_file

FASHION = "/usr/share/datasets/fashion-mnist/"


def idx(path, offset):
    return np.frombuffer(gzip.open(FASHION + path).read(), np.uint8, offset=offset)


def pixels(out):
    for split, prefix in [("train", "train"), ("test", "t10k")]:
        x = idx(f"{prefix}-images-idx3-ubyte.gz", 16).reshape(-1, 1, 28, 28)
        x = (torch.from_numpy(x.astype(np.float32) / 255.0) - 0.286) / 0.353
        save_file({"pixel_values": x.contiguous()}, f"{out}/{split}_px.safetensors")
        np.save(f"{out}/{split}_y.npy", idx(f"{prefix}-labels-idx1-ubyte.gz", 8))


def fit(out, epochs, raw, lr=5e-3, batch=128, warmup_epochs=0.5, seed=0):
    torch.manual_seed(seed)
    xs = {s: load_file(f"{out}/{s}_f.safetensors")["pre_logits"] for s in ("train", "test")}
    ys = {s: torch.from_numpy(np.load(f"{out}/{s}_y.npy").astype(np.int64)) for s in ("train", "test")}
    if not raw:
        mean, std = xs["train"].mean(0), (xs["train"].var(0, unbiased=False) + 1e-5).sqrt()
        xs = {s: (x - mean) / std for s, x in xs.items()}
    d = xs["train"].shape[1] // 2
    heads = [torch.nn.Linear(d, 10), torch.nn.Linear(d, 10)]
    params = [p for h in heads for p in h.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    n = len(xs["train"])
    steps = n // batch
    total, warm = epochs * steps, round(warmup_epochs * steps)

    def rate(step):
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, total - warm)
        return (1e-5 + (lr - 1e-5) * 0.5 * (1 + math.cos(math.pi * t))) / lr

    sched = torch.optim.lr_scheduler.LambdaLR(opt, rate)

    def logits(x):
        return (heads[0](x[:, :d]) + heads[1](x[:, d:])) / 2

    for _ in range(epochs):
        order = torch.randperm(n)
        for i in range(steps):
            idx_ = order[i * batch : (i + 1) * batch]
            x, y = xs["train"][idx_], ys["train"][idx_]
            ce = torch.nn.functional.cross_entropy
            loss = ce(heads[0](x[:, :d]), y) + ce(heads[1](x[:, d:]), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        for s in ("train", "test"):
            acc = (logits(xs[s]).argmax(1) == ys[s]).float().mean().item()
            print(f"{s} top-1 {100 * acc:.2f}%")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["pixels", "fit"])
    ap.add_argument("dir")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--raw", action="store_true")
    a = ap.parse_args()
    if a.what == "pixels":
        pixels(a.dir)
    else:
        fit(a.dir, a.epochs, a.raw)


if __name__ == "__main__":
    main()
