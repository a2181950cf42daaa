#!/usr/bin/env bash
# Sets up a virtual environment (once) and runs the test suite. This is the README's test command; .ci/run calls it.
# Arguments go to pytest:
#   bash run_tests.sh                   the whole suite (target: under 20 minutes on a 2-core CPU machine)
#   bash run_tests.sh -m "not e2e"      the quick loop (target: under 2 minutes): everything but the tests marked
#                                       e2e (trainings, preprocessing, nnU-Net commands; see tests/conftest.py)
#   bash run_tests.sh -k boundary       tests whose name matches
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup_venv.sh
# Two workers, each running whole test files (--dist loadfile: a file's module fixtures are built once). Most of the
# suite's time is nnU-Net commands starting up (about 6 s of single-threaded imports each), which one process at a
# time leaves a core idle for; NNUNETV2_EXT_TEST_WORKERS=0 runs everything in one process.
WORKERS="${NNUNETV2_EXT_TEST_WORKERS:-2}"
PARALLEL=()
if [ "$WORKERS" != "0" ]; then
  PARALLEL=(-n "$WORKERS" --dist loadfile)
fi
exec "$VENV/bin/python" -m pytest -ra --durations=30 "${PARALLEL[@]}" tests "$@"
