"""Hard-sample pre-training (Zhang et al., "Data balancing based on pre-training strategy for liver segmentation
from CT scans", Appl. Sci. 9(9):1825, 2019): trainer-free parts.

The hard/easy imbalance of a training set cannot be known before training, so a model trained on part of the data
classifies the rest:

1. :func:`stratified_split` divides the fold's training cases into B (pre-training, the paper's ratio
   ``pretrain_ratio`` of the cases) and A (classified, the rest), with the number of slices and the proportion of
   positive slices matched between them;
2. stage 1 trains on B only;
3. :func:`classify` scores every slice of A with the stage-1 model, without augmentation (the exact pass of
   :mod:`exact_scoring`), and calls a slice *hard* when its DSC (Eq. 1 convention: a slice empty in prediction and
   reference scores 1) is below the threshold: a fixed value; the paper's rule, the minimum slice DSC of a baseline
   model on its validation cases (:func:`baseline_min_slice_dsc`, ``threshold_baseline``); or by default the
   ``threshold_quantile`` quantile of the scores of A's slices that contain foreground (so it adapts to how good the
   stage-1 model is; negative slices with false positives score 0 and are hard whatever the threshold);
4. stage 2 continues training on B plus the hard slices of A (:func:`stage2_pool`); the easy slices of A stay out
   unless ``keep_easy``. The paper adds the hard slices "enhanced by flipping", i.e. each hard slice as it is and
   flipped: twice. Under nnU-Net's random mirroring a flipped copy is drawn like a plain one, so the weight is what
   counts: ``hard_copies = "both"`` (the default) gives a hard slice twice the weight of a B slice, as the paper
   intends; ``"flipped"`` or ``"plain"`` (one copy) give it the same weight (before issue 18 the default was
   ``"flipped"``, i.e. no extra weight).

A "slice" is a unit of :class:`SliceTable`: the slice in 2d, the z position of the patch centre in 3d (scored on the
patch centred there), as for PNSS/HESS.
"""
from __future__ import annotations

import os
import warnings
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
    pretrain_ratio: float = 0.5
    """The paper's ratio: share of the fold's training cases in B, on which stage 1 pre-trains; the rest, A, is
    classified by the stage-1 model. In (0, 1)."""
    selection_ratio: Optional[float] = None
    """Deprecated (the name before issue 18): the share of A, i.e. ``1 - pretrain_ratio``; identical at 0.5,
    inverted elsewhere. Setting it warns and sets ``pretrain_ratio = 1 - selection_ratio``."""
    stage1_fraction: float = 0.5
    """Share of nnU-Net's epochs trained on B only (at least one epoch in each stage)."""
    threshold: Optional[float] = None
    """Fixed DSC threshold (hard = DSC below it), in [0, 1]; None: the baseline's or the data-driven rule below."""
    threshold_baseline: Optional[str] = None
    """The paper's rule: hard = DSC at or below the minimum slice DSC of a baseline model on its validation cases of
    the same fold. A trainer name (its nnU-Net results folder for this dataset, plans and configuration, e.g.
    ``"nnUNetTrainer"``) or a path to a trainer output folder holding ``fold_X/validation``. Checked before training."""
    threshold_quantile: float = 0.25
    """Default: hard = DSC at or below this quantile of the DSC of A's slices with foreground."""
    hard_copies: str = "both"
    """How hard slices of A join stage 2: 'both' (as is and mirrored: the paper's weight 2, see the module
    docstring), 'flipped' (mirrored along x only) or 'plain' (as is) (weight 1 each)."""
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

        if self.selection_ratio is not None:
            if not (isinstance(self.selection_ratio, (int, float)) and 0 < self.selection_ratio < 1):
                bad("selection_ratio", "None or in (0, 1) (deprecated: the share of A; use pretrain_ratio)")
            if self.pretrain_ratio != 0.5 and abs(self.pretrain_ratio - (1 - self.selection_ratio)) > 1e-12:
                raise ValueError("HardPretrainParameters: set pretrain_ratio (the paper's ratio, share of B) or the "
                                 "deprecated selection_ratio (share of A), not both")
            warnings.warn("HardPretrainParameters.selection_ratio (share of A) is deprecated: use pretrain_ratio "
                          "(the paper's ratio, share of B) = 1 - selection_ratio", DeprecationWarning, stacklevel=3)
            object.__setattr__(self, "pretrain_ratio", 1.0 - float(self.selection_ratio))
            object.__setattr__(self, "selection_ratio", None)
        if not (isinstance(self.pretrain_ratio, (int, float)) and 0 < self.pretrain_ratio < 1):
            bad("pretrain_ratio", "in (0, 1) (the paper's ratio: share of the cases in B, the pre-training part)")
        if self.threshold is not None and self.threshold_baseline is not None:
            raise ValueError("HardPretrainParameters: set threshold or threshold_baseline, not both")
        if self.threshold_baseline is not None and not (isinstance(self.threshold_baseline, str)
                                                        and self.threshold_baseline):
            bad("threshold_baseline", "None or a trainer name / folder")
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

    @property
    def a_share(self) -> float:
        """Share of the cases in A (classified)."""
        return 1.0 - self.pretrain_ratio

    def stage1_epochs(self, num_epochs: int) -> int:
        return int(min(num_epochs - 1, max(1, round(self.stage1_fraction * num_epochs))))

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("selection_ratio")
        return d

    @staticmethod
    def comparable(saved: dict) -> dict:
        """A parameter dict saved by an older version, in today's form (``selection_ratio`` -> ``pretrain_ratio``;
        fields added since take their defaults), for the resume check."""
        saved = dict(saved)
        if "selection_ratio" in saved:
            share_a = saved.pop("selection_ratio")
            saved.setdefault("pretrain_ratio", None if share_a is None else 1.0 - share_a)
        defaults = HardPretrainParameters().as_dict()
        return {k: saved.get(k, defaults[k]) for k in defaults}


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
             params: HardPretrainParameters, baseline_threshold: Optional[float] = None) -> Tuple[float, np.ndarray]:
    """(threshold, hard units): hard = DSC below the fixed threshold; with ``baseline_threshold`` (the paper's rule,
    :func:`baseline_min_slice_dsc`) DSC at or below it; by default DSC at or below the
    ``threshold_quantile`` quantile of the scores of the units with foreground (``positive[units]``), so that the
    worst quarter of A's foreground slices is hard even when many of them tie (e.g. all missed, DSC 0)."""
    units, dsc = np.asarray(units, np.int64), np.asarray(dsc, float)
    if params.threshold is not None:
        threshold = float(params.threshold)
        return threshold, np.sort(units[dsc < threshold])
    if baseline_threshold is not None:
        return float(baseline_threshold), np.sort(units[dsc <= baseline_threshold])
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


def baseline_min_slice_dsc(validation_folder: str, reference_folder: str, file_ending: str,
                           dataset_json: Optional[dict] = None, ignore_label: Optional[int] = None) -> dict:
    """The paper's threshold (Zhang et al.: a slice is hard when the pre-trained model segments it worse than the
    baseline segments any slice): the minimum, over the slices of a baseline model's validation predictions whose
    reference has foreground, of the slice DSC (foreground = any label > 0, the ignore label excluded; slices along
    the first array axis as nnU-Net's reader returns the case, i.e. z). Returns ``{"threshold", "slice", "slices",
    "cases"}``. A ValueError names the folder when it holds no prediction or a prediction has no reference."""
    from nnunetv2_ext.evaluation.io import files_by_case, read_segmentation, reader_class

    predictions = files_by_case(validation_folder, file_ending) if os.path.isdir(validation_folder) else {}
    if not predictions:
        raise ValueError(f"threshold_baseline: {validation_folder} holds no validation predictions ({file_ending}); "
                         f"train the baseline on this fold first (nnUNetv2_train ... -tr <baseline>)")
    reader = reader_class(dataset_json, file_ending, next(iter(predictions.values())))()
    best = (np.inf, None)
    slices = 0
    for case, file in sorted(predictions.items()):
        ref_file = os.path.join(reference_folder, case + file_ending)
        if not os.path.isfile(ref_file):
            raise ValueError(f"threshold_baseline: case {case} of {validation_folder} has no reference {ref_file}")
        pred, _ = read_segmentation(reader, case, file, "prediction")
        ref, _ = read_segmentation(reader, case, ref_file, "reference")
        if pred.shape != ref.shape:
            raise ValueError(f"threshold_baseline: case {case}: prediction {pred.shape} and reference {ref.shape} "
                             f"differ in shape")
        valid = np.ones(ref.shape, bool) if ignore_label is None else ref != ignore_label
        p, r = (pred > 0) & valid, (ref > 0) & valid
        inter = (p & r).reshape(len(r), -1).sum(1)
        sums = p.reshape(len(p), -1).sum(1) + r.reshape(len(r), -1).sum(1)
        for z in np.flatnonzero(r.reshape(len(r), -1).any(1)):
            slices += 1
            dsc = 2.0 * inter[z] / sums[z]
            if dsc < best[0]:
                best = (float(dsc), f"{case} z={int(z)}")
    if best[1] is None:
        raise ValueError(f"threshold_baseline: no reference slice with foreground among the cases of "
                         f"{validation_folder}")
    return {"threshold": best[0], "slice": best[1], "slices": slices, "cases": len(predictions)}
