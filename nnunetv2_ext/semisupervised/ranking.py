"""How well does the consensus score rank cases by their real quality? Check on cases with a reference.

For M prediction folders of cases that do have a manual reference (e.g. the cross-validation predictions of the M
models, or ``../shared/data/msd_pancreas_predictions``), :func:`ranking_check` computes per case the slice-level
(Eq. 1) and volume-level consensus scores and the true DSC of the averaged mask against the reference, then
Spearman's rho of each score with the true DSC and the true DSC above / below the median score. This is what
``docs/semi_supervised.md`` reports, and the way to choose a threshold before pseudo-labelling unlabelled data.
"""
from __future__ import annotations

import multiprocessing
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np

from nnunetv2_ext.evaluation.io import files_by_case
from nnunetv2_ext.semisupervised.consensus import agreement_counts, combine_class_scores, dice, soft_vote
from nnunetv2_ext.semisupervised.pseudolabel import (PseudoLabelError, PredictionSet, labels_for_case, read_maps,
                                                     find_predictions)


@dataclass(frozen=True)
class CaseCheck:
    case: str
    slice_score: float
    volume_score: float
    true_dsc: float
    """DSC of the averaged mask with the reference, mean over the labels present in either."""


@dataclass(frozen=True)
class RankingSummary:
    n: int
    spearman_slice: float
    spearman_volume: float
    above_median_mean: float
    above_median_min: float
    below_median_mean: float
    below_median_min: float
    level: str
    """Level whose median splits the cases."""

    def format(self) -> str:
        return (f"{self.n} cases: Spearman rho with the true DSC of the averaged mask: slice level (Eq. 1) "
                f"{self.spearman_slice:.3f}, volume level {self.spearman_volume:.3f}; above the median {self.level}-"
                f"level score: true DSC mean {self.above_median_mean:.3f} / min {self.above_median_min:.3f}, below: "
                f"{self.below_median_mean:.3f} / {self.below_median_min:.3f}")


def _check_case(args) -> CaseCheck:
    pred, case, reference_file = args
    maps, reader = read_maps(pred, case)
    labels = labels_for_case(pred, case, maps)
    ref = reader.read_seg(reference_file)[0][0].astype(np.int64)
    if ref.shape != maps.shape[1:]:
        raise PseudoLabelError(f"case {case}: reference shape {ref.shape} != prediction shape {maps.shape[1:]}")
    labels = tuple(sorted(set(labels) | set(int(v) for v in np.unique(ref) if v != 0)))
    averaged = soft_vote(maps, labels)
    counts = agreement_counts(maps, averaged, labels)
    slice_score = combine_class_scores({c: counts[c].slice_score() for c in labels})
    volume_score = combine_class_scores({c: counts[c].volume_score() for c in labels})
    true = [dice(averaged == c, ref == c) for c in labels]
    true = [t for t in true if not np.isnan(t)]
    return CaseCheck(case, slice_score, volume_score, float(np.mean(true)) if true else float("nan"))


def ranking_check(prediction_folders: Sequence[str], reference_folder: str, dataset_json: Optional[str] = None,
                  num_processes: int = 1) -> List[CaseCheck]:
    pred: PredictionSet = find_predictions(prediction_folders, dataset_json, probabilities="no")
    refs = files_by_case(reference_folder, pred.file_ending)
    missing = sorted(set(pred.cases) - set(refs))
    if missing:
        raise PseudoLabelError(f"{len(missing)} predicted case(s) have no reference in {reference_folder}: "
                               f"{missing[:5]}")
    jobs = [(pred.for_case(c), c, refs[c]) for c in pred.cases]
    if num_processes > 1:
        with multiprocessing.get_context("spawn").Pool(num_processes) as pool:
            return pool.map(_check_case, jobs, chunksize=1)
    return [_check_case(j) for j in jobs]


def summarize(checks: Sequence[CaseCheck], level: str = "slice") -> RankingSummary:
    from scipy.stats import spearmanr
    checks = [c for c in checks if not np.isnan(c.true_dsc) and not np.isnan(c.slice_score)]
    true = np.array([c.true_dsc for c in checks])
    slice_scores = np.array([c.slice_score for c in checks])
    volume_scores = np.array([c.volume_score for c in checks])
    split = slice_scores if level == "slice" else volume_scores
    above = split > np.median(split)
    return RankingSummary(len(checks), float(spearmanr(slice_scores, true)[0]),
                          float(spearmanr(volume_scores, true)[0]), float(true[above].mean()),
                          float(true[above].min()), float(true[~above].mean()), float(true[~above].min()), level)


def main(argv=None) -> int:
    """python -m nnunetv2_ext.semisupervised.ranking REF_FOLDER PRED_1 PRED_2 ... [-np N]"""
    import argparse
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("reference_folder")
    p.add_argument("pred_folders", nargs="+")
    p.add_argument("-djfile", "--dataset-json", default=None)
    p.add_argument("-np", "--num-processes", type=int, default=2)
    a = p.parse_args(argv)
    try:
        checks = ranking_check(a.pred_folders, a.reference_folder, a.dataset_json, a.num_processes)
    except PseudoLabelError as e:
        print(f"error: {e}")
        return 2
    print("case,slice_score,volume_score,true_dsc")
    for c in checks:
        print(f"{c.case},{c.slice_score:.4f},{c.volume_score:.4f},{c.true_dsc:.4f}")
    for level in ("slice", "volume"):
        print(summarize(checks, level).format())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
