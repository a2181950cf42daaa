#!/usr/bin/env bash
# PNSS/HESS and their design choices on the realistic phantom, seeded, through nnUNetv2_ext_benchmark (issue 17 items
# 1 and 3): the seeded replacement of the single runs of scripts/pnss_hess_ablation.py (retired). Phantom A of
# scripts/fp_phantoms.sh (same data, budget and weights kept every 2 epochs), so runs of a trainer and seed that
# fp_phantoms.sh already trained are reused, not repeated.
#
#   bash scripts/pnss_hess_benchmark.sh WORK_ROOT main|design [extra benchmark arguments, e.g. --run-index 3]
#
#   main:   plain nnU-Net, PNSS, HESS, PNSS + HESS and hard-sample pre-training with the quantile threshold and with
#           the paper's (the minimum slice DSC of plain nnU-Net's run of the same seed) (the demo variants)
#   design: plain nnU-Net, PNSS + HESS with its defaults (far-negative share 0.5) and with one setting changed at a
#           time (the Abl* trainers of nnunetv2_ext/trainers/small_variants.py: sampling draw, far negatives, final
#           phase at r = 1, forward scores, nnU-Net epochs as the schedule's unit)
#
# The benchmark work folders (resumable, only their small state is committed) are docs/evidence/pnss_hess_main_seeded
# and docs/evidence/pnss_hess_design_seeded. Run it with nothing else on the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${1:?give a work root}
SET=${2:?give the set: main or design}
shift 2
case "$SET" in
  main) TRAINERS=(nnUNetTrainerDemo nnUNetTrainerPNSSDemo nnUNetTrainerHESSDemo nnUNetTrainerPNSSHESSDemo
                  nnUNetTrainerHardPretrainDemo nnUNetTrainerHardPretrainBaselineMinDemo) ;;
  # the default by its explicit name (far-negative share 0.5): runs of the default before 2026-12-07 (0.1), trained
  # under the name nnUNetTrainerPNSSHESSDemo, are never reused for it
  design) TRAINERS=(nnUNetTrainerDemo nnUNetTrainerPNSSHESSFar50Demo AblSlice AblCase AblFar0 AblFinalFull AblForward
                    AblNnunetEpochs) ;;
  *) echo "unknown set '$SET': main or design" >&2; exit 2 ;;
esac
bash scripts/fp_phantoms.sh "$ROOT" --setup-only
ROOT=$(realpath "$ROOT")
export nnUNet_raw=$ROOT/nnUNet_raw nnUNet_preprocessed=$ROOT/nnUNet_preprocessed nnUNet_results=$ROOT/nnUNet_results
export nnUNet_n_proc_DA=${nnUNet_n_proc_DA:-2} OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} PYTHONUTF8=1
BIN=$(dirname "${PYTHON:-.venv/bin/python}")
"$BIN/nnUNetv2_ext_benchmark" -d 991 -c 2d -tr "${TRAINERS[@]}" -f 0 --seeds 1 2 3 --epochs 12 --iterations 40 \
  --val-iterations 4 --batch 12 --keep-checkpoints-every 2 -device cpu --disable-tta \
  -o "docs/evidence/pnss_hess_${SET}_seeded" "$@"
# forward scores vs the exact pass (AblForward), once the benchmark has written its report (not after --list or one
# --run-index); with no AblForward run finished yet the helper says so and the script ends with its error
if [ "$SET" = design ] && [[ " $* " != *" --run-index "* && " $* " != *" --list "* ]]; then
  "$BIN/python" scripts/pnss_hess_agreement.py "$nnUNet_results/Dataset991_PhantomA" AblForward \
    docs/evidence/pnss_hess_design_seeded/forward_vs_exact.md
fi
