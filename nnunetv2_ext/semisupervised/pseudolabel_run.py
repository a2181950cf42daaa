"""``nnUNetv2_ext_pseudolabel`` as a function: scoring, selection, reports and the output dataset in order; every check
that can fail on bad input runs before anything is written (the flow is described in
:mod:`nnunetv2_ext.semisupervised.pseudolabel`)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from batchgenerators.utilities.file_and_folder_operations import join

from nnunetv2_ext.io_atomic import mark_folder
from nnunetv2_ext.semisupervised.consensus import check_level
from nnunetv2_ext.semisupervised.dataset_writer import MANIFEST_NAME, plan_dataset, write_dataset
from nnunetv2_ext.semisupervised.errors import PseudoLabelError
from nnunetv2_ext.semisupervised.pseudolabel import CaseScore, find_predictions, score_predictions
from nnunetv2_ext.semisupervised.reports import write_scores
from nnunetv2_ext.semisupervised.selection import check_selection, nothing_selected_message, select_cases


@dataclass
class PseudoLabelResult:
    scores: List[CaseScore]
    selected: List[str]
    dataset_folder: Optional[str]
    files: Dict[str, str]


def run_pseudolabel(prediction_folders: Sequence[str], out: str, level: str = "slice",
                    dataset_json: Optional[str] = None, file_ending: Optional[str] = None,
                    probabilities: str = "auto", labelled_dataset: Optional[int] = None,
                    output_dataset: Optional[int] = None, threshold: Optional[float] = None,
                    top_fraction: Optional[float] = None, images_folder: Optional[str] = None,
                    output_name: Optional[str] = None, overwrite: bool = False, copy: bool = False,
                    num_processes: int = 1, progress: bool = False, require_selection: bool = True,
                    manifest_extra: Optional[dict] = None) -> PseudoLabelResult:
    """The whole flow (module docstring). Every check that can fail on bad input runs before anything is written.

    With ``output_dataset`` and an empty selection nothing but the scores is written and ``dataset_folder`` is
    None (``require_selection`` then raises instead)."""
    check_level(level)
    check_selection(threshold, top_fraction)
    if (labelled_dataset is None) != (output_dataset is None):
        raise PseudoLabelError("--labelled-dataset and --output-dataset go together")
    if output_dataset is not None and threshold is None and top_fraction is None:
        raise PseudoLabelError("writing a dataset needs --threshold or --top-fraction")
    pred = find_predictions(prediction_folders, dataset_json, file_ending, probabilities)
    if output_dataset is not None:  # cheap checks first, so that bad ids fail before the (long) scoring
        plan_dataset(labelled_dataset, output_dataset, pred.cases, pred, images_folder, output_name, overwrite,
                     check_images=False)
    scores = score_predictions(pred, level, num_processes, progress)
    selected = select_cases(scores, threshold, top_fraction) if (threshold is not None or
                                                                top_fraction is not None) else []
    plan = None
    if output_dataset is not None and (selected or require_selection):
        if not selected:
            raise PseudoLabelError(nothing_selected_message(scores, threshold, top_fraction))
        plan = plan_dataset(labelled_dataset, output_dataset, selected, pred, images_folder, output_name, overwrite)
    names = pred.label_names
    files = write_scores(out, scores, names, selected, level, threshold)
    by_case = {s.case: s for s in scores}
    selection = {"level": level, "threshold": threshold, "top_fraction": top_fraction,
                 "prediction_folders": pred.folders, "averaged_from": "probabilities" if pred.probability_files
                 else "label maps (soft vote)", "num_scored": len(scores),
                 "num_selected": len(selected), **(manifest_extra or {})}
    with open(join(out, MANIFEST_NAME), "w", encoding="utf-8") as f:
        json.dump(dict(selection, selected=[{"case": c, "score": by_case[c].score} for c in selected]), f, indent=1)
    files["manifest"] = join(out, MANIFEST_NAME)
    mark_folder(out, "nnUNetv2_ext_pseudolabel")
    folder = None
    if plan is not None:
        folder = write_dataset(plan, pred, selected, by_case, selection, copy, num_processes)
    return PseudoLabelResult(scores, selected, folder, files)
