#!/usr/bin/env bash
# One-step set-up: installs scorefpe (editable) with its test extra into the current Python.
# torch is installed first, and only when absent: `torch==2.13.0` is the CPU build on the
# project's machines, while a bare `torch` requirement would pull several GB of CUDA wheels.
# A torch that is already there (a CUDA build on a GPU machine) is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    "$PY" -m pip install --quiet "torch==${SCOREFPE_TORCH_VERSION:-2.13.0}"
fi
"$PY" -m pip install --quiet --disable-pip-version-check -e ".[test]"
# pyenv keeps console scripts behind shims that must be refreshed after an install.
if command -v pyenv >/dev/null 2>&1; then pyenv rehash || true; fi
