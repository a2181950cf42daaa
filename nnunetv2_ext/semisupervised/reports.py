"""What pseudo-labelling reports: ``scores.csv`` (one row per case) and the score histogram."""
from __future__ import annotations

import csv
import math
import os
from typing import Dict, Optional, Sequence

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import join

from nnunetv2_ext.figure_style import own_style
from nnunetv2_ext.semisupervised.pseudolabel import CaseScore

SCORES_NAME = "scores.csv"
HISTOGRAM_NAME = "scores_histogram.png"


def write_scores(out: str, scores: Sequence[CaseScore], names: Dict[int, str], selected: Sequence[str] = (),
                 level: str = "slice", threshold: Optional[float] = None) -> Dict[str, str]:
    """scores.csv (case, score, one column per class, selected, rank) and the histogram PNG."""
    os.makedirs(out, exist_ok=True)
    classes = sorted({c for s in scores for c in s.class_scores} | set(names))
    rank = {c: i + 1 for i, c in enumerate(s.case for s in sorted(
        (s for s in scores if not math.isnan(s.score)), key=lambda s: (-s.score, s.case)))}
    chosen = set(selected)
    path = join(out, SCORES_NAME)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["case", "score"] + [f"score_{names.get(c, c)}" for c in classes] + ["rank", "selected"])
        for s in sorted(scores, key=lambda s: s.case):
            w.writerow([s.case, _fmt(s.score)] + [_fmt(s.class_scores.get(c, float("nan"))) for c in classes] +
                       [rank.get(s.case, ""), int(s.case in chosen)])
    png = join(out, HISTOGRAM_NAME)
    _histogram(png, [s.score for s in scores], [s.score for s in scores if s.case in chosen], level, threshold)
    return {"scores": path, "histogram": png}


def _fmt(v: float) -> str:
    return "" if math.isnan(v) else f"{v:.6f}"


@own_style
def _histogram(path: str, values, selected_values, level: str, threshold: Optional[float]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    values = [v for v in values if not math.isnan(v)]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.linspace(min(values + [0.0]), 1.0, 41) if values else np.linspace(0, 1, 41)
    ax.hist(values, bins=bins, color="0.7", label=f"all ({len(values)})")
    if selected_values:
        ax.hist([v for v in selected_values if not math.isnan(v)], bins=bins, color="tab:green",
                label=f"selected ({len(selected_values)})")
    if threshold is not None:
        ax.axvline(threshold, color="tab:red", ls="--", label=f"threshold {threshold:g}")
    ax.set_xlabel(f"consensus score (Eq. 1, {level} level)")
    ax.set_ylabel("cases")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
