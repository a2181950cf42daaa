"""Which pseudo-labels to trust: selection by a score threshold or the top fraction of the cases (step 3 of
:func:`~nnunetv2_ext.semisupervised.pseudolabel_run.run_pseudolabel`)."""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

from nnunetv2_ext.semisupervised.errors import PseudoLabelError
from nnunetv2_ext.semisupervised.pseudolabel import CaseScore


def check_selection(threshold: Optional[float], top_fraction: Optional[float]) -> None:
    if threshold is not None and top_fraction is not None:
        raise PseudoLabelError("give either a threshold or a top fraction, not both")
    if threshold is not None and not (isinstance(threshold, (int, float)) and 0 <= threshold <= 1):
        raise PseudoLabelError(f"threshold must be in [0, 1] (a consensus score), got {threshold}")
    if top_fraction is not None and not (isinstance(top_fraction, (int, float)) and 0 < top_fraction <= 1):
        raise PseudoLabelError(f"top fraction must be in (0, 1], got {top_fraction}")


def select_cases(scores: Sequence[CaseScore], threshold: Optional[float] = None,
                 top_fraction: Optional[float] = None) -> List[str]:
    """Selected case names, best first. Threshold: score >= t. Top fraction f: the best ceil(f N) of all N cases
    (ties broken by case name). Cases without a score rank last and are never selected."""
    check_selection(threshold, top_fraction)
    if threshold is None and top_fraction is None:
        raise PseudoLabelError("a selection needs a threshold or a top fraction")
    ranked = sorted((s for s in scores if not math.isnan(s.score)), key=lambda s: (-s.score, s.case))
    if threshold is not None:
        return [s.case for s in ranked if s.score >= threshold]
    return [s.case for s in ranked[:math.ceil(top_fraction * len(scores) - 1e-9)]]


def nothing_selected_message(scores, threshold, top_fraction) -> str:
    valid = [s.score for s in scores if not math.isnan(s.score)]
    best = f"best score {max(valid):.4f}" if valid else "no case has a score"
    rule = f"threshold {threshold}" if threshold is not None else f"top fraction {top_fraction}"
    return f"no case passes the selection ({rule}; {best} of {len(scores)} cases); no dataset written"
