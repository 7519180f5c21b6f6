#!/usr/bin/env bash
# Set-up command 2: create .venv, install sepconv with the test extras, run the test suite.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
.venv/bin/python -m pip install --quiet -e ".[test]"
# build the C++ kernels now (once per environment), not inside the first call that uses them
.venv/bin/sepconv doctor
.venv/bin/python -m pytest -q "$@"
