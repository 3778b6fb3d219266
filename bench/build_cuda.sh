#!/usr/bin/env bash
# Builds vitkit with the CUDA backend on a machine that cannot reach GitHub.
#
# Burn 0.22.1's CUDA backend (cubecl-cuda 0.11.3) always depends on cubecl-llvm, whose build
# script downloads a prebuilt LLVM from GitHub. vitkit selects CubeCL's other CUDA compiler
# (CUDA C++ through NVRTC, the `cpp` feature of cubecl-cuda), so LLVM is never called. This
# script skips the download (DOCS_RS makes the LLVM build scripts stand down), and build.rs
# links a stand-in that aborts for each LLVM entry point (bench/cuda_llvm_symbols.txt).
#
# Usage: bench/build_cuda.sh [--test NAME] [cargo args...]
#   → $CUDA_TARGET_DIR/release/vitkit (default target-cuda), or with `--test NAME` that
#   integration test, built and copied to $CUDA_TARGET_DIR/release/test-NAME (the CUDA
#   kernels' tests: --test gpu; run it on a machine with an NVIDIA GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${CUDA_TARGET_DIR:-target-cuda}"
if [[ "${1:-}" == "--test" ]]; then
    name="$2"
    shift 2
    exe="$(DOCS_RS=1 cargo test --release --features cuda --target-dir "$dir" --test "$name" --no-run \
        --message-format=json-render-diagnostics "$@" \
        | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["executable"])')"
    cp -f "$exe" "$dir/release/test-$name"
    echo "built $dir/release/test-$name (CUDA via NVRTC)"
else
    DOCS_RS=1 cargo build --release --features cuda --bin vitkit --target-dir "$dir" "$@"
    echo "built $dir/release/vitkit (CUDA via NVRTC; run with --device cuda)"
fi
