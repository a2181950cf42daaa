#!/usr/bin/env bash
# Sets up a virtual environment (once) and runs the whole test suite. This is the README's test command; .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup_venv.sh
exec "$VENV/bin/python" -m pytest -ra --durations=30 tests "$@"
