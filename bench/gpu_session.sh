#!/usr/bin/env bash
# The GPU measurements of issue 5 in one command, for a device machine lent for a short time
# (each call there costs minutes of start-up, so everything runs in one):
#   1. vit_base_patch16_224 inference, batch 256, fp32 (MODEL, INFER_BATCH below), side by side
#      with PyTorch eager;
#   2. the same model's training step, batch 64, fp32, side by side with PyTorch eager;
#   3. the autotune results CubeCL kept, packed so that they can be carried to the next machine.
# Before them, the CUDA kernels' tests when their build was carried (.gpu/test-gpu.xz).
# Tables and JSON lines go to $OUT (default /tmp/gpu_session); $OUT/env.tgz holds the tuning.
#
# Usage: bench/gpu_session.sh
#   VITKIT=vitkit built with --features cuda; when unset and .gpu/vitkit.xz exists (a stripped,
#   xz-compressed build carried over), that one is unpacked to /tmp/vitkit; else
#   target-cuda/release/vitkit. .gpu/env.tgz (earlier autotune results) is unpacked into the
#   repository root when target/environment does not exist yet.
#   PYTHON (default python3, with torch + timm), PAIRS (2), STEPS (20), WARMUP (25),
#   DEVICE (cuda; cpu only to try the script itself), MODES ("infer train"),
#   MODEL (vit_base_patch16_224), INFER_BATCH (256), TRAIN_BATCH (64).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
out="${OUT:-/tmp/gpu_session}"
mkdir -p "$out"
pairs="${PAIRS:-2}" steps="${STEPS:-20}" warmup="${WARMUP:-25}"
device="${DEVICE:-cuda}" modes="${MODES:-infer train}"
model="${MODEL:-vit_base_patch16_224}" infer_batch="${INFER_BATCH:-256}" train_batch="${TRAIN_BATCH:-64}"
export PYTHON="${PYTHON:-python3}"

if [[ -z "${VITKIT:-}" && -f .gpu/vitkit.xz ]]; then
    xz -dc .gpu/vitkit.xz >/tmp/vitkit
    chmod +x /tmp/vitkit
    VITKIT=/tmp/vitkit
fi
export VITKIT="${VITKIT:-target-cuda/release/vitkit}"
[[ -x "$VITKIT" ]] || { echo "no vitkit binary at $VITKIT" >&2; exit 1; }
if [[ -f .gpu/env.tgz && ! -d target/environment ]]; then
    tar xzf .gpu/env.tgz
fi

report="$out/report.md"
# The CUDA kernels' tests (tests/gpu.rs), when a build of them was carried (.gpu/test-gpu.xz,
# from `bench/build_cuda.sh --test gpu`): run first, their result heads the report.
tests=""
if [[ -f .gpu/test-gpu.xz ]]; then
    xz -dc .gpu/test-gpu.xz >/tmp/test-gpu
    chmod +x /tmp/test-gpu
    tests=/tmp/test-gpu
fi
{
    echo "# GPU session $(date -u +%FT%TZ)"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    "$PYTHON" -c 'import torch, timm; print("torch", torch.__version__, "timm", timm.__version__)' || true
} | tee "$report"
if [[ -n "$tests" ]]; then
    echo "## tests/gpu.rs" | tee -a "$report"
    "$tests" --test-threads 1 2>&1 | grep -E "^test |test result|panicked|assert" | tee -a "$report" || true
fi

compare() {
    local name="$1"
    shift
    echo "## $name" | tee -a "$report"
    # A failed case is reported and the others still run (and the tuning is still saved).
    bench/compare.sh --device "$device" --pairs "$pairs" --steps "$steps" --warmup "$warmup" \
        --out "$out/$name.jsonl" "$@" >"$out/$name.log" 2>&1 || echo "(exit status $?)" >>"$out/$name.log"
    grep -v '^  done:' "$out/$name.log" | tee -a "$report"
}

for mode in $modes; do
    case "$mode" in
        infer) compare "infer-$infer_batch" --case "$model infer $infer_batch" ;;
        train) compare "train-$train_batch" --case "$model train $train_batch" ;;
        *) echo "unknown mode $mode" >&2; exit 2 ;;
    esac
done

if [[ -d target/environment ]]; then
    tar czf "$out/env.tgz" target/environment
    echo "autotune results: $out/env.tgz (carry as .gpu/env.tgz)" | tee -a "$report"
fi
