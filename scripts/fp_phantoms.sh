#!/usr/bin/env bash
# Issue 22: where PNSS/HESS's raw false positives come from, and whether a remedy removes them, on two phantoms
# written independently of each other (nnunetv2_ext/phantom.py's realistic phantom, "A"; nnunetv2_ext/phantom_b.py,
# "B"): plain nnU-Net, PNSS/HESS and PNSS/HESS with false-positive replay, 3 seeds, the README demo's budget
# (12 epochs x 40 iterations, batch 12, the demo network), weights kept every 2 (A) or 4 (B) epochs so that the report
# follows the held-out set's false-positive components over training.
#
#   bash scripts/fp_phantoms.sh WORK_ROOT [TRAINER ...]
#   bash scripts/fp_phantoms.sh WORK_ROOT --setup-only      # only write and preprocess the two phantoms
#
# WORK_ROOT gets nnUNet_raw/preprocessed/results; the benchmark work folders (resumable, only their small state is
# committed) are docs/evidence/fp_phantom_a and docs/evidence/fp_phantom_b. Run it with nothing else on the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(realpath "${1:?give a work root}")
shift
TRAINERS=("${@:-nnUNetTrainerDemo nnUNetTrainerPNSSHESSDemo nnUNetTrainerPNSSHESSFPReplayDemo}")
# shellcheck disable=SC2206
TRAINERS=(${TRAINERS[@]})
export nnUNet_raw=$ROOT/nnUNet_raw nnUNet_preprocessed=$ROOT/nnUNet_preprocessed nnUNet_results=$ROOT/nnUNet_results
export nnUNet_n_proc_DA=${nnUNet_n_proc_DA:-2} OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} PYTHONUTF8=1
mkdir -p "$nnUNet_raw" "$nnUNet_preprocessed" "$nnUNet_results"
PY=${PYTHON:-.venv/bin/python}
BIN=$(dirname "$PY")

if [ ! -d "$nnUNet_raw/Dataset991_PhantomA" ]; then
  "$PY" -c "
from nnunetv2_ext.phantom import PhantomConfig, write_phantom_dataset
write_phantom_dataset(991, PhantomConfig.realistic(num_cases=24, num_test=12, shape=(40, 64, 64),
                                                   dataset_name='PhantomA'), '$nnUNet_raw')"
fi
if [ ! -d "$nnUNet_raw/Dataset992_PhantomB" ]; then
  "$PY" -m nnunetv2_ext.phantom_b -d 992 --num-cases 24 --num-test 12 --seed 0 --raw-folder "$nnUNet_raw"
fi
for d in 991 992; do
  if ! ls "$nnUNet_preprocessed"/Dataset${d}_*/nnUNetPlans_2d >/dev/null 2>&1; then
    "$BIN/nnUNetv2_plan_and_preprocess" -d $d -c 2d -np 2 -npfp 2
  fi
done
if [ "${TRAINERS[0]}" = "--setup-only" ]; then
  exit 0
fi
# phantom A keeps the weights every 2 epochs, phantom B every 4 (fewer predictions)
for d in 991:a:2 992:b:4; do
  IFS=: read -r id letter keep <<< "$d"
  "$BIN/nnUNetv2_ext_benchmark" -d "$id" -c 2d -tr "${TRAINERS[@]}" -f 0 --seeds 1 2 3 --epochs 12 \
    --iterations 40 --val-iterations 4 --batch 12 --keep-checkpoints-every "$keep" -device cpu --disable-tta \
    -o "docs/evidence/fp_phantom_${letter}"
done
