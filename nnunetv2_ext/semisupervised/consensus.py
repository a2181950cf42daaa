"""Consensus score of M predictions of one unlabelled case (Pham et al., FLARE22, Eq. 1).

For volume i with K_i slices, M model masks P_m and the averaged (soft-voted) mask A::

    score_i = 1 / (K_i M) * sum_k sum_m DSC(P_m[k], A[k])                                    (Eq. 1)

computed per foreground class c on the binary masks ``P_m == c`` and ``A == c``. Conventions (chosen so that the
figures of issue 10 on ``../shared/data/msd_pancreas_predictions`` are reproduced exactly, see
``docs/semi_supervised.md``):

- **Slices** are the first spatial axis of the arrays as nnU-Net's reader returns them (z for NIfTI/SimpleITK, the
  axis nnU-Net's 2d configuration slices).
- **Averaged mask** A: per voxel the class with the most votes (the mean of the M one-hot masks, argmax). Ties go to
  foreground against background (a binary voxel is foreground when at least half of the models say so: mean >= 0.5)
  and to the lower label between two foreground classes. With probabilities (``nnUNetv2_predict
  --save_probabilities``) A is the argmax of the mean softmax instead (:func:`averaged_from_probabilities`).
- **Both empty**: a (model, slice) pair where model m and A are both empty for class c carries no information and is
  left out, i.e. K_i M counts the informative pairs only. (Counting such pairs as DSC = 1 weights a case by its
  number of empty slices: Spearman rho 0.33 instead of 0.43 on the MSD data.)
- **Multi-class**: one score per foreground class (Eq. 1 on that class), the case score is their mean over the
  classes with at least one informative pair. A class that no model and not A predicts has no score (NaN); a case
  where no class is predicted at all has score NaN (never selected as a pseudo-label).
- **Volume level** (``level="volume"``, our variant): score_i = 1/M sum_m DSC(P_m, A) over the whole volume (models
  whose mask and A are both empty are left out).

Everything works on the bounding box of the predicted foreground, class by class, with integer counts per
(model, slice) (:class:`AgreementCounts`), so the score of a 512 x 512 x 300 case with M = 5 takes a fraction of a
second (``benchmarks/bench_consensus.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

LEVELS = ("slice", "volume")


@dataclass(frozen=True)
class AgreementCounts:
    """Voxel counts of one foreground class, per model m and slice k (only slices inside the class's bounding box;
    every other slice has zeros everywhere and so no informative pair).

    intersection[m, k] = |P_m[k] & A[k]|, model[m, k] = |P_m[k]|, averaged[k] = |A[k]|.
    """
    intersection: np.ndarray  # (M, K) int64
    model: np.ndarray  # (M, K) int64
    averaged: np.ndarray  # (K,) int64

    def slice_score(self) -> float:
        """Eq. 1 for this class: mean of DSC(P_m[k], A[k]) over the informative (model, slice) pairs; NaN if none."""
        denominator = self.model + self.averaged[None, :]
        informative = denominator > 0
        if not informative.any():
            return float("nan")
        return float(np.mean(2.0 * self.intersection[informative] / denominator[informative]))

    def volume_score(self) -> float:
        """Volume variant: mean over models of DSC(P_m, A) on the whole volume; NaN if all are empty."""
        denominator = self.model.sum(axis=1) + self.averaged.sum()
        informative = denominator > 0
        if not informative.any():
            return float("nan")
        return float(np.mean(2.0 * self.intersection.sum(axis=1)[informative] / denominator[informative]))

    def score(self, level: str) -> float:
        check_level(level)
        return self.slice_score() if level == "slice" else self.volume_score()


@dataclass(frozen=True)
class ConsensusResult:
    score: float
    """Mean of the class scores (NaN classes left out); NaN when no class was predicted at all."""
    class_scores: Dict[int, float]
    """Foreground label -> score of that class (NaN: neither a model nor the averaged mask has it)."""
    averaged: np.ndarray
    """The averaged mask (the pseudo-label), spatial shape of the inputs."""
    level: str


def check_level(level: str) -> None:
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")


def _check_inputs(label_maps: np.ndarray, labels: Sequence[int]) -> Tuple[int, ...]:
    if label_maps.ndim < 2:
        raise ValueError(f"label_maps must be (M, *spatial), got shape {label_maps.shape}")
    if label_maps.shape[0] < 1:
        raise ValueError("need at least one model's label map")
    if not np.issubdtype(label_maps.dtype, np.integer):
        raise ValueError(f"label maps must be integer arrays, got {label_maps.dtype}")
    labels = tuple(sorted(int(v) for v in labels))
    if not labels or labels[0] <= 0 or len(set(labels)) != len(labels):
        raise ValueError(f"labels must be distinct foreground labels (> 0), got {labels}")
    return labels


def _box_of_projection(first_axis: np.ndarray, rest: Optional[np.ndarray]) -> Optional[Tuple[slice, ...]]:
    idx = np.flatnonzero(first_axis)
    if len(idx) == 0:
        return None
    box = (slice(int(idx[0]), int(idx[-1]) + 1),)
    if rest is None:
        return box
    inner = _foreground_box([rest])
    return None if inner is None else box + inner


def _foreground_box(masks: Sequence[np.ndarray]) -> Optional[Tuple[slice, ...]]:
    """Bounding box (tuple of slices) of the union of the non-zero voxels of same-shaped arrays; None if empty.

    Axis 0 from contiguous reductions over the other axes, then the remaining axes from the OR of the arrays'
    planes inside that range (cheap around a small organ)."""
    # max() != 0 rather than any(): about twice as fast on integer label maps (which are never negative)
    ndim = masks[0].ndim
    if ndim == 1:
        present = np.zeros(masks[0].shape, dtype=bool)
        for m in masks:
            present |= m != 0
        return _box_of_projection(present, None)
    present = np.zeros(masks[0].shape[0], dtype=bool)
    for m in masks:
        present |= m.reshape(m.shape[0], -1).max(axis=1) != 0
    idx = np.flatnonzero(present)
    if len(idx) == 0:
        return None
    z = slice(int(idx[0]), int(idx[-1]) + 1)
    plane = np.zeros(masks[0].shape[1:], dtype=bool)
    for m in masks:
        plane |= m[z].max(axis=0) != 0
    return _box_of_projection(present, plane)


def _label_bits(maps: Sequence[np.ndarray], top: int):
    """Per axis, the OR of (1 << label) over the other axes and all maps: bit c set where label c occurs."""
    dtype = np.uint16 if top < 16 else np.uint32 if top < 32 else np.uint64
    ndim = maps[0].ndim
    first = np.zeros(maps[0].shape[0], dtype=dtype)
    plane = np.zeros(maps[0].shape[1:], dtype=dtype)
    one = dtype(1)
    for m in maps:
        bits = np.left_shift(one, m.astype(dtype, copy=False))
        plane |= np.bitwise_or.reduce(bits, axis=0)
        first |= np.bitwise_or.reduce(bits.reshape(bits.shape[0], -1), axis=1)
    projections = [first]
    for axis in range(ndim - 1):
        others = tuple(a for a in range(ndim - 1) if a != axis)
        projections.append(np.bitwise_or.reduce(plane, axis=others) if others else plane)
    return projections, one, dtype


def _class_boxes(maps: Sequence[np.ndarray], labels: Tuple[int, ...]) -> Dict[int, Optional[Tuple[slice, ...]]]:
    """Per foreground label, a box holding all its voxels in ``maps``; None if it has none.

    One label: the box of all non-zero voxels (a superset is enough: the boxes only limit where we count). Several:
    the exact box of each label in one pass per map (label values turned into bits that are OR-reduced)."""
    if len(labels) == 1:
        return {labels[0]: _foreground_box(maps)}
    if max(labels) >= 64:  # too many labels for a bit mask: one pass per label
        return {c: _foreground_box([m == c for m in maps]) for c in labels}
    projections, one, dtype = _label_bits(maps, max(labels))
    boxes: Dict[int, Optional[Tuple[slice, ...]]] = {}
    for c in labels:
        box = []
        for projection in projections:
            idx = np.flatnonzero(projection & (one << dtype(c)))
            if len(idx) == 0:
                break
            box.append(slice(int(idx[0]), int(idx[-1]) + 1))
        boxes[c] = tuple(box) if len(box) == len(projections) else None
    return boxes


def _vote(crop: np.ndarray, labels: Tuple[int, ...], boxes, out_dtype) -> np.ndarray:
    """Soft vote inside the foreground crop (see :func:`soft_vote`)."""
    num_models = crop.shape[0]
    count_dtype = np.uint8 if num_models < 255 else np.int64
    # background votes; a foreground label must reach them (tie -> foreground) to win
    best = np.full(crop.shape[1:], num_models, dtype=count_dtype)
    for m in crop:
        best -= m != 0
    winner = np.zeros(crop.shape[1:], dtype=out_dtype)
    for c in labels:
        cbox = boxes[c]
        if cbox is None:
            continue
        votes = np.zeros(tuple(s.stop - s.start for s in cbox), dtype=count_dtype)
        for m in crop[(slice(None),) + cbox]:
            votes += m == c
        current_best, current_winner = best[cbox], winner[cbox]  # views: assignments below write through
        wins = (votes > current_best) | ((votes == current_best) & (current_winner == 0) & (votes > 0))
        current_best[wins] = votes[wins]
        current_winner[wins] = c
    return winner


def _counts(crop: np.ndarray, averaged_crop: np.ndarray, labels: Tuple[int, ...], boxes
            ) -> Dict[int, AgreementCounts]:
    num_models = crop.shape[0]
    out = {}
    for c in labels:
        cbox = boxes[c]
        if cbox is None:
            out[c] = _empty_counts(num_models)
            continue
        reference = (averaged_crop[cbox] == c)
        num_slices = reference.shape[0]
        ref_flat = reference.reshape(num_slices, -1)
        inter = np.empty((num_models, num_slices), np.int64)
        model = np.empty((num_models, num_slices), np.int64)
        for i, m in enumerate(crop[(slice(None),) + cbox]):
            mask = (m == c).reshape(num_slices, -1)
            model[i] = mask.view(np.uint8).sum(axis=1, dtype=np.int64)
            inter[i] = (mask & ref_flat).view(np.uint8).sum(axis=1, dtype=np.int64)
        out[c] = AgreementCounts(inter, model, ref_flat.view(np.uint8).sum(axis=1, dtype=np.int64))
    return out


def _empty_counts(num_models: int) -> AgreementCounts:
    return AgreementCounts(np.zeros((num_models, 0), np.int64), np.zeros((num_models, 0), np.int64),
                           np.zeros(0, np.int64))


def _label_dtype(labels: Tuple[int, ...]):
    return np.uint8 if labels[-1] < 2 ** 8 else np.uint16 if labels[-1] < 2 ** 16 else np.int64


def _score_case(label_maps: np.ndarray, labels: Tuple[int, ...], averaged: Optional[np.ndarray]
                ) -> Tuple[np.ndarray, Dict[int, AgreementCounts]]:
    """(averaged mask, counts per label); works on the foreground box, class boxes computed once."""
    num_models = label_maps.shape[0]
    maps = list(label_maps) + ([averaged] if averaged is not None else [])
    box = _foreground_box(maps)
    if averaged is None:
        averaged = np.zeros(label_maps.shape[1:], dtype=_label_dtype(labels))
        given = False
    else:
        given = True
    if box is None:
        return averaged, {c: _empty_counts(num_models) for c in labels}
    crop = label_maps[(slice(None),) + box]
    boxes = _class_boxes(list(crop) + ([averaged[box]] if given else []), labels)
    if not given:
        averaged[box] = _vote(crop, labels, boxes, averaged.dtype)
    return averaged, _counts(crop, averaged[box], labels, boxes)


def soft_vote(label_maps: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """The averaged mask of M label maps (M, *spatial): per voxel the label with the most votes; ties go to
    foreground against background and to the lower label among foreground labels (see the module docstring).

    Values other than 0 and ``labels`` are not allowed. Returns the smallest unsigned dtype that holds the labels."""
    labels = _check_inputs(label_maps, labels)
    return _score_case(label_maps, labels, None)[0]


def averaged_from_probabilities(probability_sum: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """Averaged mask from the summed (or mean) softmax of the M models, (C, *spatial) with channel i = label i
    (nnU-Net's order for label-based datasets: background, 1, 2, ...). Argmax; the labels must be 1..C-1."""
    labels = tuple(sorted(int(v) for v in labels))
    if labels != tuple(range(1, probability_sum.shape[0])):
        raise ValueError(f"probabilities have {probability_sum.shape[0]} channels; expected background + labels "
                         f"{labels} (1..C-1); region-based (sigmoid) datasets are not supported")
    out_dtype = np.uint8 if labels[-1] < 2 ** 8 else np.uint16
    return np.argmax(probability_sum, axis=0).astype(out_dtype)


def agreement_counts(label_maps: np.ndarray, averaged: np.ndarray, labels: Sequence[int]
                     ) -> Dict[int, AgreementCounts]:
    """Per foreground label, the counts of Eq. 1 (see :class:`AgreementCounts`)."""
    labels = _check_inputs(label_maps, labels)
    if averaged.shape != label_maps.shape[1:]:
        raise ValueError(f"averaged mask shape {averaged.shape} != label map shape {label_maps.shape[1:]}")
    return _score_case(label_maps, labels, averaged)[1]


def combine_class_scores(class_scores: Dict[int, float]) -> float:
    """Case score: mean of the class scores that exist (NaN if none)."""
    values = [v for v in class_scores.values() if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def consensus_score(label_maps: np.ndarray, labels: Sequence[int], level: str = "slice",
                    averaged: Optional[np.ndarray] = None) -> ConsensusResult:
    """Eq. 1 (``level="slice"``) or its volume variant for one case.

    Args:
        label_maps: (M, *spatial) integer label maps of the M models (same grid).
        labels: the foreground labels to score (dataset.json's labels without background/ignore).
        averaged: the averaged mask, if already known (e.g. from probabilities); default :func:`soft_vote`.
    """
    check_level(level)
    labels = _check_inputs(label_maps, labels)
    if averaged is not None and averaged.shape != label_maps.shape[1:]:
        raise ValueError(f"averaged mask shape {averaged.shape} != label map shape {label_maps.shape[1:]}")
    averaged, counts = _score_case(label_maps, labels, averaged)
    class_scores = {c: counts[c].score(level) for c in labels}
    return ConsensusResult(combine_class_scores(class_scores), class_scores, averaged, level)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """DSC of two boolean masks; NaN when both are empty (used for the true-DSC checks)."""
    denominator = int(a.sum()) + int(b.sum())
    return 2.0 * int(np.logical_and(a, b).sum()) / denominator if denominator else float("nan")
