#!/usr/bin/env bash
# Creates bench/.venv with PyTorch, timm and open_clip from PyPI: the baseline that bench/compare.sh runs
# (open_clip for the CLIP case, and with ftfy for the CLIP fixtures and tokenizer tests' generators).
# Usage: bench/setup_pytorch.sh [python3]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${1:-python3}"
if [ ! -x "$here/.venv/bin/python" ]; then
    "$python" -m venv "$here/.venv"
fi
"$here/.venv/bin/python" -m pip install --quiet --upgrade pip
"$here/.venv/bin/python" -m pip install --quiet torch timm open_clip_torch ftfy
"$here/.venv/bin/python" -c 'import torch, timm; print("torch", torch.__version__, "timm", timm.__version__, "threads", torch.get_num_threads())'
