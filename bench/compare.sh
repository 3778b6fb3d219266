#!/usr/bin/env bash
# vitkit against PyTorch (timm's ViT and NesT, the official CMT code, open_clip's CLIP, SiT from timm's parts) on the same machine, in one run: for each case the two are run
# alternately (vitkit, PyTorch, vitkit, PyTorch, ...), and the table gives per case the median
# over pairs of the vitkit/PyTorch ratios of step time and peak memory.
#
# Usage: bench/compare.sh [--pairs N] [--steps N] [--warmup N] [--device cpu|cuda] [--dtype f32|bf16|f16]
#                         [--compile] [--autocast] [--case "MODEL MODE BATCH [bench args]"]... [--out FILE]
#   VITKIT=path/to/vitkit (default target/release/vitkit)
#   PYTHON=python with torch and timm (default bench/.venv/bin/python, see bench/setup_pytorch.sh)
# --dtype runs both sides with parameters and activations in that type (PyTorch's model.to(dtype)).
# --compile adds torch.compile, --autocast PyTorch's bf16 autocast (f32 weights, mixed precision),
# as further contenders in every pair. --case (repeatable) replaces the device's default cases.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
vitkit="${VITKIT:-$root/target/release/vitkit}"
python="${PYTHON:-$here/.venv/bin/python}"
pairs=3 steps=8 warmup=2 device=cpu dtype=f32 compile=0 autocast=0 out=""
cases=()
while [ $# -gt 0 ]; do
    case "$1" in
        --pairs) pairs="$2"; shift 2 ;;
        --steps) steps="$2"; shift 2 ;;
        --warmup) warmup="$2"; shift 2 ;;
        --device) device="$2"; shift 2 ;;
        --dtype) dtype="$2"; shift 2 ;;
        --compile) compile=1; shift ;;
        --autocast) autocast=1; shift ;;
        --case) cases+=("$2"); shift 2 ;;
        --out) out="$2"; shift 2 ;;
        *) echo "compare.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
[ -x "$vitkit" ] || { echo "compare.sh: no vitkit binary at $vitkit (cargo build --release, or set VITKIT)" >&2; exit 1; }
"$python" -c 'import torch, timm' 2>/dev/null || { echo "compare.sh: $python lacks torch/timm (run bench/setup_pytorch.sh, or set PYTHON)" >&2; exit 1; }

threads="$(nproc)"
if [ ${#cases[@]} -gt 0 ]; then
    :
elif [ "$device" = cpu ]; then
    cases=(
        "vit_tiny_patch4_32 train 64"
        "vit_tiny_patch4_32 infer 64"
        "vit_mini_patch4_28 train 128 --in-chans 1 --global-pool avg"
        "vit_base_patch16_224 infer 8"
        "vit_base_patch16_224 infer 1"
        "cmt_ti train 32"
        "cmt_ti infer 8"
        "cmt_mini_32 train 128 --in-chans 1"
        "nest_mini_32 train 128 --in-chans 1"
        "nest_tiny infer 8"
        "clip_tiny_32 train 64"
        "clip_tiny_32 infer 64"
        "sit_wide_patch7_28 pretrain 128 --in-chans 1"
        "sit_wide_patch7_28 infer 128 --in-chans 1"
    )
else
    cases=(
        "vit_base_patch16_224 train 64"
        "vit_base_patch16_224 infer 256"
        "vit_tiny_patch4_32 train 64"
    )
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$vitkit" models --json > "$work/models.json"
results="${out:-$work/results.jsonl}"
mkdir -p "$(dirname "$results")"
: > "$results"
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; device $device, $dtype; $pairs pairs, $steps timed steps after $warmup warm-up" >&2
# One PyTorch run of the current case, its JSON line tagged with the contender's name.
pytorch() {
    local contender="$1"
    shift
    # shellcheck disable=SC2086
    "$python" "$here/pytorch_baseline.py" --models-json "$work/models.json" --device "$device" \
        --threads "$threads" --model "$model" --mode "$mode" --batch-size "$batch" \
        --steps "$steps" --warmup "$warmup" $extra "$@" --json \
        | sed "s/^{/{\"contender\":\"$contender\",\"case\":\"$c\",\"pair\":$pair,/" >> "$results"
}

for c in "${cases[@]}"; do
    read -r model mode batch extra <<<"$c"
    extra="${extra:-}"
    for pair in $(seq "$pairs"); do
        # shellcheck disable=SC2086
        "$vitkit" --device "$device" bench --model "$model" --mode "$mode" --batch-size "$batch" \
            --steps "$steps" --warmup "$warmup" --dtype "$dtype" $extra --json \
            | sed "s/^{/{\"contender\":\"vitkit\",\"case\":\"$c\",\"pair\":$pair,/" >> "$results"
        pytorch pytorch --dtype "$dtype"
        if [ "$compile" = 1 ]; then
            pytorch torch.compile --compile --dtype "$dtype"
        fi
        if [ "$autocast" = 1 ]; then
            pytorch autocast-bf16 --autocast bf16
        fi
        echo "  done: $c (pair $pair)" >&2
    done
done
"$python" "$here/summarize.py" "$results"
