"""Command lines ``nnUNetv2_ext_pseudolabel`` and ``nnUNetv2_ext_self_train`` (thin wrappers of the Python API).

Exit codes: 0 done, 1 nothing selected (pseudolabel) or a failed nnU-Net step (self_train), 2 bad input (reported
before any file is written).
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from nnunetv2_ext.io_atomic import OutputFolderError, check_output_folder
from nnunetv2_ext.semisupervised.errors import PseudoLabelError
from nnunetv2_ext.semisupervised.pseudolabel_run import run_pseudolabel


def pseudolabel_main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="nnUNetv2_ext_pseudolabel",
        description="Consensus score (Pham et al., FLARE22, Eq. 1) of M predictions of the same unlabelled cases; "
                    "writes OUT/scores.csv, a histogram and, with --labelled-dataset/--output-dataset and a "
                    "selection rule, a new nnU-Net raw dataset = labelled cases + the selected cases with their "
                    "averaged pseudo-labels.")
    p.add_argument("pred_folders", nargs="+", help="M >= 2 prediction folders (nnUNetv2_predict outputs or plain "
                                                   "folders of label maps) of the same cases")
    p.add_argument("-o", "--output", required=True, help="folder for scores.csv, the histogram and the manifest")
    p.add_argument("--level", choices=("slice", "volume"), default="slice",
                   help="slice: Eq. 1, mean DSC over slices and models (default); volume: mean DSC over models")
    p.add_argument("-djfile", "--dataset-json", default=None,
                   help="dataset.json for the labels (default: the one nnUNetv2_predict writes into its output "
                        "folder; without any, the labels are taken from the data)")
    p.add_argument("--file-ending", default=None, help="e.g. .nii.gz (default: dataset.json's, else guessed)")
    p.add_argument("--probabilities", choices=("auto", "yes", "no"), default="auto",
                   help="average the softmax of --save_probabilities (.npz) instead of voting the label maps "
                        "(auto: when every folder has them)")
    p.add_argument("--labelled-dataset", type=int, default=None, help="id of the labelled nnU-Net raw dataset")
    p.add_argument("--output-dataset", type=int, default=None, help="id of the dataset to write")
    p.add_argument("--output-name", default=None, help="name part of the output dataset (default: <labelled "
                                                       "name>Pseudo)")
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--threshold", type=float, default=None, help="select cases with score >= threshold, in [0, 1]")
    sel.add_argument("--top-fraction", type=float, default=None,
                     help="select the best ceil(f N) of the N cases, f in (0, 1] (cases without a score never)")
    p.add_argument("--images", default=None, help="images of the unlabelled cases (nnU-Net naming CASE_0000.ext); "
                                                  "default: the labelled dataset's imagesUnlabeled")
    p.add_argument("--copy", action="store_true", help="copy files into the new dataset instead of hard links")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output dataset (only one written by this command, with the same name) "
                        "and an existing -o folder (only one written by nnunetv2_ext)")
    p.add_argument("-np", "--num-processes", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    try:
        try:  # the output rule of every command (nnunetv2_ext.io_atomic), before the scoring starts
            check_output_folder(a.output, [*a.pred_folders, a.images, a.dataset_json], a.overwrite)
        except OutputFolderError as e:
            raise PseudoLabelError(str(e)) from None
        result = run_pseudolabel(a.pred_folders, a.output, a.level, a.dataset_json, a.file_ending, a.probabilities,
                                 a.labelled_dataset, a.output_dataset, a.threshold, a.top_fraction, a.images,
                                 a.output_name, a.overwrite, a.copy, a.num_processes, not a.no_progress,
                                 require_selection=False)
    except PseudoLabelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    valid = sorted((s for s in result.scores if s.score == s.score), key=lambda s: s.score)
    print(f"scored {len(result.scores)} cases ({a.level} level); " +
          (f"score min {valid[0].score:.4f} ({valid[0].case}), median {valid[len(valid) // 2].score:.4f}, max "
           f"{valid[-1].score:.4f}" if valid else "no case has a score"))
    if a.threshold is not None or a.top_fraction is not None:
        print(f"selected {len(result.selected)} case(s)")
    if result.dataset_folder:
        print(f"wrote {result.dataset_folder}")
    print("report: " + ", ".join(result.files.values()))
    if a.output_dataset is not None and result.dataset_folder is None:
        print("no case passes the selection: no dataset written", file=sys.stderr)
        return 1
    return 0


def self_train_main(argv: Optional[List[str]] = None) -> int:
    from nnunetv2_ext.semisupervised.self_train import main
    return main(argv)


if __name__ == "__main__":
    sys.exit(pseudolabel_main())
