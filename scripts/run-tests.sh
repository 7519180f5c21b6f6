#!/usr/bin/env bash
# Set-up command 2: create .venv, install sepconv with the test extras, run the test suite.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
.venv/bin/python -m pip install --quiet -e ".[test]"
.venv/bin/python -m pytest -q "$@"
