"""Hard-sample pre-training (Zhang et al., "Data balancing based on pre-training strategy for liver segmentation
from CT scans", Appl. Sci. 9(9):1825, 2019): trainer-free parts.

The hard/easy imbalance of a training set cannot be known before training, so a model trained on part of the data
classifies the rest:

1. :func:`stratified_split` divides the fold's training cases into A (classified, ``selection_ratio`` of the cases)
   and B (pre-training), with the number of slices and the proportion of positive slices matched between them;
2. stage 1 trains on B only;
3. :func:`classify` scores every slice of A with the stage-1 model, without augmentation (the exact pass of
   :mod:`exact_scoring`), and calls a slice *hard* when its DSC (Eq. 1 convention: a slice empty in prediction and
   reference scores 1) is below the threshold: a fixed value, or by default the ``threshold_quantile`` quantile of
   the scores of A's slices that contain foreground (so it adapts to how good the stage-1 model is; negative slices
   with false positives score 0 and are hard whatever the threshold);
4. stage 2 continues training on B plus the hard slices of A, added mirrored (:func:`stage2_pool`); the easy slices of
   A stay out unless ``keep_easy``.

A "slice" is a unit of :class:`SliceTable`: the slice in 2d, the z position of the patch centre in 3d (scored on the
patch centred there), as for PNSS/HESS.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Tuple

import numpy as np

from nnunetv2_ext.figure_style import own_style
from nnunetv2_ext.sampling.parameters import SAMPLING_MODES
from nnunetv2_ext.sampling.sampler import UnitPool
from nnunetv2_ext.sampling.slice_table import SliceTable

HARD_COPIES = ("flipped", "both", "plain")


@dataclass(frozen=True)
class HardPretrainParameters:
    selection_ratio: float = 0.5
    """Share of the fold's training cases in A (classified by the stage-1 model); the rest, B, pre-trains."""
    stage1_fraction: float = 0.5
    """Share of nnU-Net's epochs trained on B only (at least one epoch in each stage)."""
    threshold: Optional[float] = None
    """Fixed DSC threshold (hard = DSC below it), in [0, 1]; None: the data-driven default below."""
    threshold_quantile: float = 0.25
    """Default: hard = DSC at or below this quantile of the DSC of A's slices with foreground."""
    hard_copies: str = "flipped"
    """How hard slices of A join stage 2: 'flipped' (the paper: mirrored along x), 'both' (as is and mirrored),
    'plain' (as is)."""
    keep_easy: bool = False
    """Stage 2 also trains the easy slices of A (the paper leaves them out)."""
    sampling: str = "slice_oversample"
    """How samples are drawn from the pool of slices (see :class:`~nnunetv2_ext.sampling.parameters.SamplingParameters`);
    'case' needs slabs and is not offered."""
    seed: int = 12345
    """Seed of the split search."""

    def __post_init__(self):
        def bad(name, requirement):
            raise ValueError(f"HardPretrainParameters.{name} must be {requirement}, got {getattr(self, name)!r}")

        if not (isinstance(self.selection_ratio, (int, float)) and 0 < self.selection_ratio < 1):
            bad("selection_ratio", "in (0, 1)")
        if not (isinstance(self.stage1_fraction, (int, float)) and 0 < self.stage1_fraction < 1):
            bad("stage1_fraction", "in (0, 1)")
        if self.threshold is not None and not (isinstance(self.threshold, (int, float)) and 0 <= self.threshold <= 1):
            bad("threshold", "None or in [0, 1]")
        if not (isinstance(self.threshold_quantile, (int, float)) and 0 < self.threshold_quantile < 1):
            bad("threshold_quantile", "in (0, 1)")
        if self.hard_copies not in HARD_COPIES:
            bad("hard_copies", f"one of {HARD_COPIES}")
        if self.sampling not in SAMPLING_MODES or self.sampling == "case":
            bad("sampling", "'slice' or 'slice_oversample'")
        if not isinstance(self.keep_easy, bool):
            bad("keep_easy", "True or False")

    def stage1_epochs(self, num_epochs: int) -> int:
        return int(min(num_epochs - 1, max(1, round(self.stage1_fraction * num_epochs))))

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Split:
    a: np.ndarray
    """Case indices (into the slice table) of part A, ascending."""
    b: np.ndarray

    def stats(self, table: SliceTable) -> dict:
        def part(cases):
            n = int(table.num_slices[cases].sum())
            pos = int(sum(table.positive[table.offsets[c]:table.offsets[c + 1]].sum() for c in cases))
            return {"cases": [table.identifiers[c] for c in cases], "slices": n, "positive_slices": pos,
                    "positive_fraction": pos / max(n, 1)}
        return {"A": part(self.a), "B": part(self.b)}


def _positives(table: SliceTable) -> np.ndarray:
    return np.add.reduceat(table.positive.astype(np.int64), table.offsets[:-1]) if table.num_units else \
        np.zeros(0, np.int64)


def stratified_split(table: SliceTable, ratio: float, seed: int, restarts: int = 16) -> Split:
    """A = round(ratio x cases) cases (at least 1, at most all but 1) such that A holds about ``ratio`` of the slices
    and A and B have about the same proportion of positive slices.

    Minimises ``|slices_A / slices - ratio| + |pos_frac_A - pos_frac_B|`` by seeded random restarts, each improved by
    the best swap of a case of A with one of B (all pairs evaluated at once) while the cost drops; deterministic for
    a given seed."""
    n = len(table.identifiers)
    if n < 2:
        raise ValueError(f"hard-sample pre-training needs at least 2 training cases, got {n}")
    k = int(min(n - 1, max(1, round(ratio * n))))
    slices = table.num_slices.astype(float)
    pos = _positives(table).astype(float)
    total, total_pos = slices.sum(), pos.sum()

    def cost(sa, pa):
        sb, pb = total - sa, total_pos - pa
        return np.abs(sa / total - ratio) + np.abs(pa / np.maximum(sa, 1) - pb / np.maximum(sb, 1))

    rng = np.random.default_rng(seed)
    best, best_cost = None, np.inf
    for _ in range(restarts):
        in_a = np.zeros(n, bool)
        in_a[rng.choice(n, k, replace=False)] = True
        while True:
            a, b = np.flatnonzero(in_a), np.flatnonzero(~in_a)
            sa, pa = slices[a].sum(), pos[a].sum()
            current = cost(sa, pa)
            swapped = cost(sa - slices[a][:, None] + slices[b][None], pa - pos[a][:, None] + pos[b][None])
            i, j = np.unravel_index(np.argmin(swapped), swapped.shape)
            if swapped[i, j] >= current - 1e-12:
                break
            in_a[a[i]], in_a[b[j]] = False, True
        if current < best_cost:
            best, best_cost = in_a.copy(), current
    return Split(np.flatnonzero(best), np.flatnonzero(~best))


def check_split(table: SliceTable, split: Split) -> None:
    """Refuses a split where A or B has no slice with foreground (nothing to learn or nothing to classify)."""
    pos = _positives(table)
    for name, cases in (("A", split.a), ("B", split.b)):
        if pos[cases].sum() == 0:
            raise ValueError(f"part {name} of the split ({[table.identifiers[c] for c in cases]}) has no slice with "
                             f"foreground; change selection_ratio or the fold")


def units_of(table: SliceTable, cases: np.ndarray) -> np.ndarray:
    return np.concatenate([np.arange(table.offsets[c], table.offsets[c + 1]) for c in cases]).astype(np.int64) \
        if len(cases) else np.zeros(0, np.int64)


def classify(units: np.ndarray, dsc: np.ndarray, positive: np.ndarray,
             params: HardPretrainParameters) -> Tuple[float, np.ndarray]:
    """(threshold, hard units): hard = DSC below the fixed threshold; by default DSC at or below the
    ``threshold_quantile`` quantile of the scores of the units with foreground (``positive[units]``), so that the
    worst quarter of A's foreground slices is hard even when many of them tie (e.g. all missed, DSC 0)."""
    units, dsc = np.asarray(units, np.int64), np.asarray(dsc, float)
    if params.threshold is not None:
        threshold = float(params.threshold)
        return threshold, np.sort(units[dsc < threshold])
    fg = dsc[positive[units]]
    if not len(fg):
        raise ValueError("part A has no scored slice with foreground: no data-driven threshold")
    threshold = float(np.quantile(fg, params.threshold_quantile))
    return threshold, np.sort(units[dsc <= threshold])


def stage2_pool(table: SliceTable, split: Split, hard_units: np.ndarray, params: HardPretrainParameters) -> UnitPool:
    """B's slices, A's hard slices as ``hard_copies`` says, and A's easy slices with ``keep_easy``."""
    parts, flips = [units_of(table, split.b)], [np.zeros(int(table.num_slices[split.b].sum()), bool)]
    hard = np.asarray(hard_units, np.int64)
    if params.hard_copies in ("plain", "both"):
        parts.append(hard)
        flips.append(np.zeros(len(hard), bool))
    if params.hard_copies in ("flipped", "both"):
        parts.append(hard)
        flips.append(np.ones(len(hard), bool))
    if params.keep_easy:
        easy = np.setdiff1d(units_of(table, split.a), hard)
        parts.append(easy)
        flips.append(np.zeros(len(easy), bool))
    return UnitPool.from_units(table, np.concatenate(parts), np.concatenate(flips))


def classification_record(table: SliceTable, split: Split, units: np.ndarray, dsc: np.ndarray, threshold: float,
                          hard: np.ndarray, epoch: int) -> dict:
    """What ``hard_pretrain_log.json`` stores about the classification of A."""
    cases, _ = table.case_and_slice(hard)
    per_case = {table.identifiers[c]: int((cases == c).sum()) for c in split.a}
    return {"epoch": int(epoch), "threshold": float(threshold), "n_scored": int(len(units)), "n_hard": int(len(hard)),
            "n_easy": int(len(units) - len(hard)),
            "n_hard_with_foreground": int(table.positive[hard].sum()), "hard_per_case": per_case,
            "units": np.asarray(units).tolist(), "dsc": np.round(np.asarray(dsc, float), 5).tolist(),
            "hard_units": np.asarray(hard).tolist()}


@own_style
def plot_classification(record: dict, path: str) -> None:
    """Histogram of A's slice scores with the threshold, and hard slices per case of A."""
    import matplotlib
    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    ax[0].hist(record["dsc"], bins=np.linspace(0, 1, 41), color="C0")
    ax[0].axvline(record["threshold"], color="r", ls="--", label=f"threshold {record['threshold']:.3f}")
    ax[0].set_xlabel("slice DSC of part A (stage-1 model, no augmentation)")
    ax[0].set_ylabel("slices")
    ax[0].legend()
    names = list(record["hard_per_case"])
    ax[1].bar(range(len(names)), [record["hard_per_case"][n] for n in names], color="C3")
    ax[1].set_xticks(range(len(names)))
    ax[1].set_xticklabels(names, rotation=90, fontsize=7)
    ax[1].set_ylabel("hard slices")
    ax[1].set_title(f"{record['n_hard']} hard / {record['n_scored']} slices of A (epoch {record['epoch']})")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
