#!/usr/bin/env bash
# Set-up command 1: create .venv, install sepconv with the demo extras, run `sepconv demo`.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
.venv/bin/python -m pip install --quiet -e ".[demo]"
# build the C++ kernels now (once per environment), not inside the first call that uses them
.venv/bin/sepconv doctor
.venv/bin/sepconv demo "$@"
