#!/usr/bin/env bash
# The quick test loop on the lowest nnU-Net this package allows (setup.py's floor) in a separate virtual
# environment, so that the floor stays true. Not part of CI's every run (it installs a second environment);
# run it after changing the floor or nnU-Net internals we use:  bash scripts/check_nnunet_floor.sh
set -euo pipefail
cd "$(dirname "$0")/.."
FLOOR=$(python3 -c "import re; print(re.search(r'nnunetv2>=([0-9.]+)', open('setup.py').read()).group(1))")
export NNUNETV2_EXT_VENV="${NNUNETV2_EXT_FLOOR_VENV:-.venv-nnunet-floor}"
source scripts/setup_venv.sh
"$VENV/bin/python" -m pip install -q "nnunetv2==$FLOOR"
"$VENV/bin/python" -c "import nnunetv2, importlib.metadata as m; print('nnunetv2', m.version('nnunetv2'))"
exec "$VENV/bin/python" -m pytest -q -m "not e2e" tests "$@"
