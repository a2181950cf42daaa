#!/usr/bin/env bash
# Creates (once) the virtual environment used by run_tests.sh and run_demo.sh and installs the package into it.
# Sourced, it leaves VENV set. The (editable) install is repeated only when setup.py or pyproject.toml changed since
# the last one (a stamp in the environment records their checksum), so a second run starts at once.
set -euo pipefail
VENV="${NNUNETV2_EXT_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
STAMP="$VENV/.nnunetv2_ext_install_stamp"
WANT="$(cat setup.py pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ] || ! "$VENV/bin/python" -c "import nnunetv2_ext" 2>/dev/null; then
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # The CPU build of torch lies on this machine's disk; installing it first keeps pip from fetching a CUDA build.
  "$VENV/bin/python" -c "import torch" 2>/dev/null || "$VENV/bin/python" -m pip install -q "torch==2.13.0" \
    || "$VENV/bin/python" -m pip install -q torch
  "$VENV/bin/python" -m pip install -q -e ".[test]"
  echo "$WANT" > "$STAMP"
fi
# nnU-Net's commands (nnUNetv2_train, ...) are run as subprocesses by the tests and the demo
export PATH="$(cd "$VENV/bin" && pwd):$PATH"
# UTF-8 whatever the locale (CI's may be ASCII): nnU-Net's progress bars and our '±' tables are not ASCII
export PYTHONUTF8=1
