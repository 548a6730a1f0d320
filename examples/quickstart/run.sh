#!/usr/bin/env bash
# The quickstart: a tiny model trained with tensor parallelism over 2 processes (CPU or GPU).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} "$PY" -m torch.distributed.run --nproc_per_node 2 \
  examples/quickstart/train_tiny.py --tp 2 "$@"
