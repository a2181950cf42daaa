#!/usr/bin/env bash
# The README's main command: sets up the environment (once), then plain nnU-Net vs PNSS/HESS on the phantom (CPU).
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup_venv.sh
exec "$VENV/bin/nnunetv2_ext_demo" "$@"
