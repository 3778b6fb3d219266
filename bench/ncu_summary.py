#!/usr/bin/env python3
"""Where one step's GPU time goes, from Nsight Compute's per-kernel durations.

Input: the CSV of `ncu --csv --metrics gpu__time_duration.sum <vitkit bench ... --warmup W --steps S>`
(bench/gpu_profile.sh writes it). Every launch of the run is in it, warm-up and set-up included,
so the last step is cut out: the first kernel (in launch order) that is launched exactly
`--steps` times (W + S) is taken to open each step (for a ViT, the patch embedding's first
kernel), and the launches from its last occurrence on are the last step.

Prints that step's device time by kind of kernel, then its largest kernels with launch counts.

    python3 bench/ncu_summary.py ncu-infer.csv --steps 2
"""

import argparse
import collections
import csv
import re
import sys

KINDS = [
    ("matrix product", r"^matmul"),
    ("softmax (vitkit kernel)", r"^softmax"),
    ("attention kernel", r"attention|flash"),
    ("copy / layout", r"^copy_kernel|^into_contiguous|^slice|^permute"),
    ("reduction (fused)", r"^reduce_kernel_fused|^reduce_kernel_broadcasted"),
    ("reduction", r"^reduce"),
    ("elementwise (fused)", r"^elemwise_fuse"),
    ("elementwise (unfused)", r"^kernel_binop|^kernel_scalar|^unary|^mask_|^kernel_cmp"),
    ("random / fill", r"^prng|^full_kernel"),
]


def kind_of(name):
    for kind, pattern in KINDS:
        if re.search(pattern, name):
            return kind
    return "other"


def short(name):
    # CubeCL kernel names carry their element types and a hash; keep the family and the hash.
    return re.sub(r"_(lhs|in|t|c|e|f)_f(32|16)\w*?_([0-9a-f]{8})$", r"…\3", name)[:70]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("csv")
    p.add_argument("--steps", type=int, required=True, help="steps the profiled run made (warm-up + timed)")
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args()

    launches = []
    with open(args.csv, newline="") as f:
        for row in csv.reader(f):
            if len(row) < 15 or row[0] == "ID" or row[12] != "gpu__time_duration.sum":
                continue
            unit = {"ns": 1e-6, "nsecond": 1e-6, "us": 1e-3, "usecond": 1e-3, "ms": 1.0, "msecond": 1.0}[row[13]]
            launches.append((row[4], float(row[14].replace(",", "")) * unit, row[8]))
    if not launches:
        sys.exit(f"ncu_summary: no gpu__time_duration.sum rows in {args.csv}")

    counts = collections.Counter(name for name, _, _ in launches)
    marker = next((name for name, _, _ in launches if counts[name] == args.steps), None)
    if marker is None:
        sys.exit(f"ncu_summary: no kernel is launched exactly {args.steps} times; is --steps right?")
    start = max(i for i, (name, _, _) in enumerate(launches) if name == marker)
    step = launches[start:]
    total = sum(ms for _, ms, _ in step)
    print(f"{len(launches)} launches profiled; the last step: {len(step)} launches, {total:.1f} ms of device time")
    print(f"(steps opened by {short(marker)})\n")

    by_kind = collections.defaultdict(lambda: [0, 0.0])
    by_kernel = collections.defaultdict(lambda: [0, 0.0, ""])
    for name, ms, grid in step:
        by_kind[kind_of(name)][0] += 1
        by_kind[kind_of(name)][1] += ms
        entry = by_kernel[name]
        entry[0] += 1
        entry[1] += ms
        entry[2] = grid
    print(f"{'kind':<24}{'launches':>9}{'ms':>10}{'share':>8}")
    for kind, (n, ms) in sorted(by_kind.items(), key=lambda kv: -kv[1][1]):
        print(f"{kind:<24}{n:>9}{ms:>10.2f}{100 * ms / total:>7.1f}%")
    print(f"\n{'kernel':<72}{'launches':>9}{'ms':>10}{'ms each':>9}  grid (last)")
    for name, (n, ms, grid) in sorted(by_kernel.items(), key=lambda kv: -kv[1][1])[: args.top]:
        print(f"{short(name):<72}{n:>9}{ms:>10.2f}{ms / n:>9.3f}  {grid}")


if __name__ == "__main__":
    main()
