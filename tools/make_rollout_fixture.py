"""Reference attention rollout for vitkit's tests, written independently of the Rust code.

    python3 tools/make_rollout_fixture.py tests/fixtures/rollout.json

Follows Abnar & Zuidema's `compute_joint_attention` as the ViT authors used it: add the
identity to each layer's (head-averaged, row-stochastic) attention, renormalise rows, and
multiply the layers with the newer one on the left.
"""
import json
import sys

import numpy as np


def joint_attention(att):
    aug = att + np.eye(att.shape[1])[None]
    aug = aug / aug.sum(axis=-1, keepdims=True)
    joint = [aug[0]]
    for layer in range(1, len(aug)):
        joint.append(aug[layer] @ joint[-1])
    return np.stack(joint)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/rollout.json"
    rng = np.random.default_rng(0)
    layers, tokens = 4, 10
    logits = rng.normal(size=(layers, tokens, tokens)) * 2.0
    att = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
    joint = joint_attention(att)
    with open(out, "w") as f:
        json.dump({"layers": layers, "tokens": tokens, "attention": att.ravel().tolist(), "joint": joint[-1].ravel().tolist()}, f)


if __name__ == "__main__":
    main()
