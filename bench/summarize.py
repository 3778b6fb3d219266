#!/usr/bin/env python3
"""Prints the table of bench/compare.sh from its JSON lines: per case, the medians over pairs of
each contender's step time, throughput and peak memory, and of the per-pair vitkit/PyTorch ratios
(a ratio taken within a pair, where both ran back to back, is what survives a noisy machine)."""

import json
import statistics
import sys
from collections import defaultdict


def main(path):
    runs = defaultdict(dict)  # (case, pair) -> contender -> result
    cases = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            r = json.loads(line)
            if r["case"] not in cases:
                cases.append(r["case"])
            runs[(r["case"], r["pair"])][r["contender"]] = r

    # Contenders beyond the pair (torch.compile, autocast-bf16) get a step time and a ratio each.
    others = sorted({name for v in runs.values() for name in v} - {"vitkit", "pytorch"})
    head = "| case | vitkit ms/step | PyTorch ms/step | time ratio | vitkit img/s | PyTorch img/s | throughput ratio | vitkit peak MiB | PyTorch peak MiB | memory ratio | vitkit GFLOP/s | PyTorch GFLOP/s |"
    rule = "|---|---|---|---|---|---|---|---|---|---|---|---|"
    for name in others:
        head += f" {name} ms/step | time ratio vs {name} |"
        rule += "---|---|"
    print(head)
    print(rule)
    med = statistics.median
    for case in cases:
        pairs = [v for (c, _), v in runs.items() if c == case and "vitkit" in v and "pytorch" in v]
        if not pairs:
            continue
        ours = [p["vitkit"] for p in pairs]
        theirs = [p["pytorch"] for p in pairs]
        row = [
            case,
            f"{med(r['median_ms'] for r in ours):.1f}",
            f"{med(r['median_ms'] for r in theirs):.1f}",
            f"**{med(p['vitkit']['median_ms'] / p['pytorch']['median_ms'] for p in pairs):.2f}**",
            f"{med(r['images_per_s'] for r in ours):.1f}",
            f"{med(r['images_per_s'] for r in theirs):.1f}",
            f"**{med(p['vitkit']['images_per_s'] / p['pytorch']['images_per_s'] for p in pairs):.2f}**",
            f"{med(r['peak_rss_mib'] for r in ours):.0f}",
            f"{med(r['peak_rss_mib'] for r in theirs):.0f}",
            f"{med(p['vitkit']['peak_rss_mib'] / p['pytorch']['peak_rss_mib'] for p in pairs):.2f}",
        ]
        # Both sides did the same arithmetic: vitkit's count of it over each side's step time.
        gflop = ours[0].get("gflop_per_step")
        if gflop:
            row.append(f"{med(gflop * 1e3 / r['median_ms'] for r in ours):.1f}")
            row.append(f"{med(gflop * 1e3 / r['median_ms'] for r in theirs):.1f}")
        else:
            row += ["—", "—"]
        for name in others:
            present = [p for p in pairs if name in p]
            if present:
                row.append(f"{med(p[name]['median_ms'] for p in present):.1f}")
                row.append(f"{med(p['vitkit']['median_ms'] / p[name]['median_ms'] for p in present):.2f}")
            else:
                row += ["—", "—"]
        print("| " + " | ".join(row) + " |")
    print()
    print(f"{len(runs)} pairs over {len({c for c, _ in runs})} case(s); time ratio = vitkit step time / PyTorch step time (lower is better for vitkit);")
    print("throughput ratio = vitkit images/s / PyTorch images/s (higher is better); memory = peak resident set.")
    frameworks = {r.get("framework") for v in runs.values() for r in v.values() if r.get("framework")}
    if frameworks:
        print("PyTorch side: " + "; ".join(sorted(frameworks)))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: summarize.py RESULTS.jsonl")
    main(sys.argv[1])
