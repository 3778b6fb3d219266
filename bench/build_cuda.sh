#!/usr/bin/env bash
# Builds vitkit with the CUDA backend on a machine that cannot reach GitHub.
#
# Burn 0.22.1's CUDA backend (cubecl-cuda 0.11.3) always depends on cubecl-llvm, whose build
# script downloads a prebuilt LLVM from GitHub. vitkit selects CubeCL's other CUDA compiler
# (CUDA C++ through NVRTC, the `cpp` feature of cubecl-cuda), so LLVM is never called. This
# script skips the download (DOCS_RS makes the LLVM build scripts stand down), links once
# leaving the LLVM entry points unresolved, then links again with a stub for each of them that
# aborts if it were ever reached (the dynamic loader resolves every symbol at start-up).
#
# Usage: bench/build_cuda.sh [cargo args...]   → $CUDA_TARGET_DIR/release/vitkit (default target-cuda)
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${CUDA_TARGET_DIR:-target-cuda}"
build() {
    DOCS_RS=1 cargo rustc --release --features cuda --bin vitkit --target-dir "$dir" "$@"
}
build "${@}" -- -C link-arg=-Wl,--unresolved-symbols=ignore-all
stubs="$(realpath "$dir")/llvm_stubs"
{
    echo '#include <stdlib.h>'
    nm -D --undefined-only "$dir/release/vitkit" | awk '$1 == "U" && $2 !~ /@/ { print "void " $2 "(void) { abort(); }" }'
} > "$stubs.c"
echo "stubbing $(grep -c abort "$stubs.c") never-called LLVM symbols"
cc -O1 -fPIC -c "$stubs.c" -o "$stubs.o"
build "${@}" -- -C link-arg="$stubs.o"
echo "built $dir/release/vitkit (CUDA via NVRTC; run with --device cuda)"
