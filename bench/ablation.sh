#!/usr/bin/env bash
# What each CPU optimisation buys: `vitkit bench` with the optimisations switched on one by one
# through VITKIT_FUSED, the settings alternated round by round (the machines are noisy), and per
# setting the median over rounds of each run's median step time.
#
# Usage: bench/ablation.sh [--model M] [--batch-size B] [--rounds N] [--train-steps N] [--infer-steps N]
#                          [--modes "train infer"] [--settings "S1 S2 ..."] [-- extra bench args]
#   --settings replaces the cumulative list below (e.g. to time one optimisation against its absence).
#   VITKIT=path/to/vitkit (default target/release/vitkit)
#   VITKIT_AVX2=path/to/vitkit built with --no-default-features (AVX2 matrix products only): then
#   the VITKIT_FUSED rows run that binary and a last row, "+ avx512", runs VITKIT with all on.
set -euo pipefail

model=vit_tiny_patch4_32
batch=64
rounds=3
train_steps=5
infer_steps=8
modes="train infer"
custom_settings=""
extra=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --model) model="$2"; shift 2 ;;
        --batch-size) batch="$2"; shift 2 ;;
        --rounds) rounds="$2"; shift 2 ;;
        --train-steps) train_steps="$2"; shift 2 ;;
        --infer-steps) infer_steps="$2"; shift 2 ;;
        --modes) modes="$2"; shift 2 ;;
        --settings) custom_settings="$2"; shift 2 ;;
        --) shift; extra=("$@"); break ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
vitkit="${VITKIT:-target/release/vitkit}"
[[ -x "$vitkit" ]] || { echo "no vitkit binary at $vitkit (cargo build --release)" >&2; exit 1; }
avx2="${VITKIT_AVX2:-}"

# Cumulative settings, in the order the optimisations were added.
settings=(
    none
    gelu,softmax,layernorm
    gelu,softmax,layernorm,linear
    gelu,softmax,layernorm,linear,attention
    gelu,softmax,layernorm,linear,attention,epilogue
    gelu,softmax,layernorm,linear,attention,epilogue,cls
    gelu,softmax,layernorm,linear,attention,epilogue,cls,split
    gelu,softmax,layernorm,linear,attention,epilogue,cls,split,inplace
)
# shellcheck disable=SC2206  # a space-separated list on purpose
[[ -n "$custom_settings" ]] && settings=($custom_settings)
fused_binary="${avx2:-$vitkit}"
[[ -x "$fused_binary" ]] || { echo "no vitkit binary at $fused_binary" >&2; exit 1; }
[[ -n "$avx2" ]] && settings+=(avx512)
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for round in $(seq "$rounds"); do
    for s in "${settings[@]}"; do
        for mode in $modes; do
            steps=$([[ $mode == train ]] && echo "$train_steps" || echo "$infer_steps")
            if [[ $s == avx512 ]]; then bin="$vitkit" fused=all; else bin="$fused_binary" fused="$s"; fi
            json=$(VITKIT_FUSED="$fused" "$bin" bench --model "$model" --batch-size "$batch" --mode "$mode" \
                --steps "$steps" --warmup 2 --json "${extra[@]}")
            printf '%s\t%s\t%s\n' "$s" "$mode" "$json" >>"$out"
        done
    done
    echo "  done: round $round" >&2
done

python3 - "$out" "$model" "$batch" "${settings[@]}" <<'EOF'
import json, statistics, sys
path, model, batch, settings = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
runs = {}
for line in open(path):
    s, mode, js = line.rstrip("\n").split("\t", 2)
    runs.setdefault((s, mode), []).append(json.loads(js))
print(f"{model}, batch {batch}; medians over rounds of each run's median")
print("| VITKIT_FUSED | train ms/step | change | train peak MiB | infer ms/batch | change |")
print("|---|---|---|---|---|---|")
prev = {}
for s in settings:
    row = ["+ AVX-512 matrix products (all on)" if s == "avx512" else f"`{s}`"]
    for mode in ("train", "infer"):
        if (s, mode) not in runs:
            row += ["—", "—"] + (["—"] if mode == "train" else [])
            continue
        ms = statistics.median(r["median_ms"] for r in runs[(s, mode)])
        change = f"{(ms / prev[mode] - 1) * 100:+.0f}%" if mode in prev else "—"
        prev[mode] = ms
        row += [f"{ms:.1f}", change]
        if mode == "train":
            row.append(f"{statistics.median(r['peak_rss_mib'] for r in runs[(s, mode)]):.0f}")
    print("| " + " | ".join(row) + " |")
EOF
