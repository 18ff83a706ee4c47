#!/usr/bin/env bash
# Create .venv and install pegasus-gsg with its test tools, from nothing.
# torch comes first, pinned to the CPU wheel that these machines keep on disk: letting pip
# resolve a bare `torch` would pull a multi-GB CUDA build. Pass TORCH_SPEC to override.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "${TORCH_SPEC:-torch==2.13.0}"
.venv/bin/python -m pip install --quiet -e ".[dev,ct2]"
.venv/bin/python -c "import torch, transformers, accelerate, datasets, grpc; print('setup ok: torch', torch.__version__, '| transformers', transformers.__version__)"
