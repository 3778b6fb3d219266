#!/usr/bin/env bash
# Where the GPU time goes, vitkit beside PyTorch, on a CUDA machine. For each case:
#   1. a timed vitkit run (the first process on a machine also autotunes, and CubeCL keeps the
#      results under target/environment for later processes; its autotune decisions are logged),
#   2. vitkit under Nsight Compute (ncu, one duration per kernel launch, kernels serialised),
#      summarised by bench/ncu_summary.py into the last step's device time by kind of kernel,
#   3. PyTorch's timed run and its profiler table (self device time per kernel) for the same step.
# Everything is appended to $OUT/report.txt (OUT defaults to /tmp/gpu_profile).
#
# Usage: bench/gpu_profile.sh "MODE BATCH DTYPE" ...      e.g. "train 64 f32" "infer 256 bf16"
#   VITKIT=vitkit built with --features cuda (default target-cuda/release/vitkit)
#   PYTHON=python with torch + timm (default python3), MODEL (default vit_base_patch16_224),
#   NCU (default ncu on the PATH, else /usr/local/cuda/bin/ncu), LIMIT=seconds per vitkit
#   process (default 240), STEPS/WARMUP of the timed runs (default 10/10); TIMED=0, NCU_RUN=0,
#   TORCH=0 skip a part. Files: $OUT/tune-MODE-BATCH-DTYPE.log (autotune decisions),
#   $OUT/ncu-MODE-BATCH-DTYPE.csv (every launch).
#
# Not CubeCL's own profiler (cubecl.toml [profiling]): its per-launch times include work queued
# before the launch, so its tables do not add up to a step.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
vitkit="${VITKIT:-$root/target-cuda/release/vitkit}"
python="${PYTHON:-python3}"
model="${MODEL:-vit_base_patch16_224}"
limit="${LIMIT:-240}" steps="${STEPS:-10}" warmup="${WARMUP:-10}"
out="${OUT:-/tmp/gpu_profile}"
mkdir -p "$out"
report="$out/report.txt"
work="$(mktemp -d)"
# CubeCL reads cubecl.toml from the working directory (or a parent): written for one run, then removed.
config="$root/cubecl.toml"
trap 'rm -rf "$work" "$config"' EXIT
cd "$root"
"$vitkit" models --json > "$work/models.json" || exit 1

ncu="${NCU:-$(command -v ncu || echo /usr/local/cuda/bin/ncu)}"

for case in "$@"; do
    read -r mode batch dtype <<<"$case"
    bench=("$vitkit" --device cuda bench --model "$model" --mode "$mode" --batch-size "$batch" --dtype "$dtype")
    echo "## $model $case" | tee -a "$report"

    tune="$out/tune-$mode-$batch-$dtype.log"
    tune_config='[autotune.logger]\nlevel = "minimal"\nfile = "%s"\n'
    if [ "${TIMED:-1}" = 1 ]; then
        # shellcheck disable=SC2059
        printf "$tune_config" "$tune" > "$config"
        : > "$tune"
        start=$(date +%s)
        timeout "$limit" "${bench[@]}" --steps "$steps" --warmup "$warmup" --json >> "$report" 2> "$work/err" \
            || { echo "vitkit timed run failed or timed out (exit $?)" >> "$report"; tail -n 5 "$work/err" >> "$report"; }
        echo "vitkit timed run: $(( $(date +%s) - start )) s wall; $(grep -c "^Fastest result" "$tune") autotune decisions" >> "$report"
    fi

    if [ "${NCU_RUN:-1}" = 1 ]; then
        csv="$out/ncu-$mode-$batch-$dtype.csv"
        start=$(date +%s)
        timeout "$limit" "$ncu" --clock-control none --metrics gpu__time_duration.sum --csv \
            "${bench[@]}" --steps 1 --warmup 1 > "$csv" 2> "$work/err" \
            || { echo "ncu run failed or timed out (exit $?)" >> "$report"; tail -n 3 "$work/err" >> "$report"; }
        echo "vitkit under ncu: $(( $(date +%s) - start )) s wall" >> "$report"
        "$python" "$root/bench/ncu_summary.py" "$csv" --steps 2 >> "$report" 2>&1
    fi
    [ "${TORCH:-1}" = 1 ] || continue

    "$python" "$root/bench/pytorch_baseline.py" --models-json "$work/models.json" --device cuda \
        --model "$model" --mode "$mode" --batch-size "$batch" --dtype "$dtype" \
        --steps "$steps" --warmup "$warmup" --json --profile "$work/torch.txt" >> "$report" 2> "$work/err" \
        || { echo "PyTorch run failed" >> "$report"; tail -n 5 "$work/err" >> "$report"; }
    echo "PyTorch profiler, 3 steps:" >> "$report"
    head -n 40 "$work/torch.txt" | cut -c1-220 >> "$report"
done
echo "report: $report"
