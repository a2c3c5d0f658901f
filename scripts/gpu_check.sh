#!/usr/bin/env bash
# The flash-attention GPU check, trimmed to finish in under 5 minutes on one recent GPU:
# the @gpu kernel tests (fp32/fp16/bf16, large n), then `bloomlib bench flash` at n = 1k, 4k, 16k, d = 128.
# Usage: scripts/gpu_check.sh   (PYTHON=... to choose the interpreter; needs CUDA and triton)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA device here')"
"$PY" -m pytest tests/test_kernels.py -m gpu -q -p no:cacheprovider
"$PY" -m bloomlib.cli bench flash --n 1024 4096 16384 --d 128 --json
