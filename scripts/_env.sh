# Shared set-up: a virtual environment in .venv with PyTorch's CPU build.
# Sourced by run-demo.sh and run-tests.sh; not meant to be run on its own.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python3 -m venv .venv
# Install torch first and pinned, so nothing later can pull a multi-GB CUDA build.
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
