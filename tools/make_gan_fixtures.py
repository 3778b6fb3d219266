"""Writes the GAN fixtures for vitkit's tests (tests/gan.rs):

- `pixel_shuffle.safetensors`: `x` [2, 12, 3, 5] random, `shuffled` = torch's
  `F.pixel_shuffle(x, 2)`, `y` [1, 8, 4, 4] and `unshuffled` = `F.pixel_unshuffle(y, 2)`.
- `frechet.safetensors`: two feature sets `a` [400, 12] and `b` [300, 12] (correlated Gaussians
  with different means and covariances, float32), their NumPy statistics `mu_a`, `cov_a`,
  `mu_b`, `cov_b` (`np.cov(rowvar=False)`, float64) and `fid` (float64): the Fréchet distance as
  pytorch-fid computes it, `|mu_a - mu_b|^2 + tr(cov_a) + tr(cov_b) - 2 tr(sqrtm(cov_a @ cov_b))`
  with SciPy's `linalg.sqrtm`, real part.

Run in a venv with torch, numpy, scipy and safetensors (bench/.venv):

    bench/.venv/bin/python tools/make_gan_fixtures.py tests/fixtures
"""
import sys

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.numpy import save_file as save_np
from safetensors.torch import save_file
from scipy import linalg


def main(out):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 12, 3, 5, generator=g)
    y = torch.randn(1, 8, 4, 4, generator=g)
    save_file(
        {
            "x": x,
            "shuffled": F.pixel_shuffle(x, 2).contiguous(),
            "y": y,
            "unshuffled": F.pixel_unshuffle(y, 2).contiguous(),
        },
        f"{out}/pixel_shuffle.safetensors",
    )

    rng = np.random.default_rng(11)
    d = 12
    mix_a = rng.normal(size=(d, d))
    mix_b = rng.normal(size=(d, d)) * 0.7 + np.eye(d)
    a = (rng.normal(size=(400, d)) @ mix_a + rng.normal(size=d)).astype(np.float32)
    b = (rng.normal(size=(300, d)) @ mix_b + 0.5 * rng.normal(size=d)).astype(np.float32)
    mu_a, mu_b = a.astype(np.float64).mean(0), b.astype(np.float64).mean(0)
    cov_a = np.cov(a.astype(np.float64), rowvar=False)
    cov_b = np.cov(b.astype(np.float64), rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b)
    fid = ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root.real)
    save_np(
        {
            "a": a,
            "b": b,
            "mu_a": mu_a,
            "cov_a": cov_a,
            "mu_b": mu_b,
            "cov_b": cov_b,
            "fid": np.array([fid], dtype=np.float64),
        },
        f"{out}/frechet.safetensors",
    )
    print("fid", fid)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures")
