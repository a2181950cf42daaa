#!/usr/bin/env bash
# Cascade tumour variant on the lesion phantom, seeded, through nnUNetv2_ext_benchmark (issue 17 item 3, issue 18
# items 4 and 7): plain nnU-Net, the cascade, the cascade with the transfer step T, the dual-branch stage 2 and the
# paper's configuration (multi-scale stage 1 + dual-branch stage 2 + T), 3 seeds, the tumour label measured.
# Replaced the single unseeded runs of the retired scripts/cascade_evidence.py.
#
#   bash scripts/cascade_benchmark.sh WORK_ROOT [extra benchmark arguments, e.g. --run-index 3 or --collect]
#
# WORK_ROOT gets nnUNet_raw/preprocessed/results; the benchmark work folder (resumable, only its small state is
# committed) is docs/evidence/cascade_benchmark. Run it with nothing else on the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(realpath "${1:?give a work root}")
shift
export nnUNet_raw=$ROOT/nnUNet_raw nnUNet_preprocessed=$ROOT/nnUNet_preprocessed nnUNet_results=$ROOT/nnUNet_results
export nnUNet_n_proc_DA=${nnUNet_n_proc_DA:-2} OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} PYTHONUTF8=1
mkdir -p "$nnUNet_raw" "$nnUNet_preprocessed" "$nnUNet_results"
PY=${PYTHON:-.venv/bin/python}
BIN=$(dirname "$PY")
if [ ! -d "$nnUNet_raw/Dataset930_CascadeBench" ]; then
  # the lesion phantom: 16 training + 8 held-out cases, 24 x 48 x 48, every 4th hard
  "$PY" -c "
from nnunetv2_ext.phantom import PhantomConfig, write_phantom_dataset
write_phantom_dataset(930, PhantomConfig(num_cases=16, num_test=8, shape=(24, 48, 48), lesions=True,
                                         dataset_name='CascadeBench'), '$nnUNet_raw')"
fi
if ! ls "$nnUNet_preprocessed"/Dataset930_*/nnUNetPlans_2d >/dev/null 2>&1; then
  "$BIN/nnUNetv2_plan_and_preprocess" -d 930 -c 2d -np 1
fi
"$BIN/nnUNetv2_ext_benchmark" -d 930 -c 2d -tr nnUNetTrainer nnUNetTrainerCascadeTumor \
  nnUNetTrainerCascadeTumorTransfer nnUNetTrainerCascadeTumorDualBranch nnUNetTrainerCascadeTumorPaper \
  -f 0 --seeds 1 2 3 --epochs 30 --iterations 25 --val-iterations 5 --batch 4 --width 16 -device cpu \
  --disable-tta --label tumour -o docs/evidence/cascade_benchmark "$@"
