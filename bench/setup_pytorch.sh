#!/usr/bin/env bash
# Creates bench/.venv with PyTorch and timm from PyPI: the baseline that bench/compare.sh runs.
# Usage: bench/setup_pytorch.sh [python3]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${1:-python3}"
if [ ! -x "$here/.venv/bin/python" ]; then
    "$python" -m venv "$here/.venv"
fi
"$here/.venv/bin/python" -m pip install --quiet --upgrade pip
"$here/.venv/bin/python" -m pip install --quiet torch timm
"$here/.venv/bin/python" -c 'import torch, timm; print("torch", torch.__version__, "timm", timm.__version__, "threads", torch.get_num_threads())'
