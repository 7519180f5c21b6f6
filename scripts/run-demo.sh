#!/usr/bin/env bash
# Set-up command 1: create .venv, install sepconv with the demo extras, run `sepconv demo`.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
.venv/bin/python -m pip install --quiet -e ".[demo]"
.venv/bin/sepconv demo "$@"
