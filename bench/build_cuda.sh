#!/usr/bin/env bash
# Builds vitkit with the CUDA backend on a machine that cannot reach GitHub.
#
# Burn 0.22.1's CUDA backend (cubecl-cuda 0.11.3) always depends on cubecl-llvm, whose build
# script downloads a prebuilt LLVM from GitHub. vitkit selects CubeCL's other CUDA compiler
# (CUDA C++ through NVRTC, the `cpp` feature of cubecl-cuda), so LLVM is never called: this
# script skips the download (DOCS_RS makes the LLVM build scripts stand down) and lets the final
# link leave the never-called LLVM entry points unresolved.
#
# Usage: bench/build_cuda.sh [cargo args...]   → target-cuda/release/vitkit
set -euo pipefail
cd "$(dirname "$0")/.."
DOCS_RS=1 cargo rustc --release --features cuda --bin vitkit --target-dir "${CUDA_TARGET_DIR:-target-cuda}" "$@" \
    -- -C link-arg=-Wl,--unresolved-symbols=ignore-all
echo "built ${CUDA_TARGET_DIR:-target-cuda}/release/vitkit (CUDA via NVRTC; run with --device cuda)"
