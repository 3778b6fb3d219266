"""How often GradCAT's final block lands on the object, for each setting of its uncertain
choices, on Fashion-MNIST test images (a garment on a black background, so "on the object" is
measurable: the chosen block's mean brightness against the whole image's):

    bench/.venv/bin/python tools/gradcat_localisation.py target/release/vitkit runs/fm_nest [N]

Runs `vitkit explain --method gradcat` on every (400/N)-th of the first 400 test images with
each setting and prints, per setting, the share of images whose final block is brighter than
the image's mean and the median of that brightness ratio. Reads the IDX files of Debian's
dataset-fashion-mnist; needs numpy and Pillow (bench/.venv has both).
"""
import gzip
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image

SETTINGS = [(sign, reduce, score) for score in ("child", "parent") for reduce in ("mean", "gradcam")
            for sign in ("plus", "minus")]


def main():
    vitkit, run = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 100
    raw = gzip.open("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").read()
    images = np.frombuffer(raw[16:], dtype=np.uint8).reshape(-1, 28, 28)
    work = tempfile.mkdtemp()
    paths = []
    for i in range(0, 400, max(1, 400 // n)):
        p = os.path.join(work, f"test{i}.png")
        Image.fromarray(images[i]).save(p)
        paths.append(p)
    print(f"{len(paths)} test images; | sign | reduce | score from | final block brighter than the image | median brightness ratio |")
    for sign, reduce, score in SETTINGS:
        out = os.path.join(work, "out")
        subprocess.run([vitkit, "explain", "--checkpoint", run, *paths, "--method", "gradcat", "--out", out,
                        "--gradcat-sign", sign, "--gradcat-reduce", reduce, "--gradcat-score", score],
                       check=True, stdout=subprocess.DEVNULL)
        ratios = []
        for p in paths:
            with open(os.path.join(out, os.path.basename(p)[:-4] + "_gradcat.json")) as f:
                cat = json.load(f)["gradcat"]
            top, left, bottom, right = cat["path"][-1]["pixels"]
            # The model's input: the image resized to the run's size, as vitkit does (bilinear).
            first = cat["path"][0]["pixels"]  # a child of the root: half the input's side
            size = 2 * (first[2] - first[0])
            img = np.asarray(Image.open(p).resize((size, size), Image.BILINEAR), dtype=np.float64)
            ratios.append(img[top:bottom, left:right].mean() / max(img.mean(), 1e-9))
        ratios = np.array(ratios)
        print(f"| {sign} | {reduce} | {score} | {100 * np.mean(ratios > 1):.0f}% | {np.median(ratios):.2f} |")


if __name__ == "__main__":
    main()
