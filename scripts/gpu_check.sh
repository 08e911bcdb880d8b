#!/usr/bin/env bash
# The GPU check: run it whenever a GPU machine is lent (under 8 minutes on one H100/H200).
#   bash scripts/gpu_check.sh            # bench at ~1B (D, X, H, LLaVA, Mllama) + 100-step fits under DDP, FSDP1, FSDP2
#   bash scripts/gpu_check.sh --smoke    # the same path on the CPU: tiny model, 2 gloo processes (what the tests run)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
exec "$PYTHON" scripts/gpu_check.py "$@"
