"""Checks that a dataset suits an organ -> tumour two-stage method (organ label 1 with tumour label 2 inside it), run
before training."""
from __future__ import annotations

from typing import List

import numpy as np

CASCADE_LABELS = [0, 1, 2]


def check_cascade_labels(label_manager, dataset_name: str) -> None:
    """The dataset.json must declare exactly background 0, organ 1, tumour 2, without regions or an ignore label."""
    if label_manager.has_regions:
        raise ValueError(f"{dataset_name}: the cascade needs plain labels (0 background, 1 organ, 2 tumour inside "
                         f"the organ), not region-based training")
    if label_manager.has_ignore_label:
        raise ValueError(f"{dataset_name}: the cascade does not support an ignore label "
                         f"(label {label_manager.ignore_label})")
    if list(label_manager.all_labels) != CASCADE_LABELS:
        raise ValueError(f"{dataset_name}: the cascade needs labels {CASCADE_LABELS} (0 background, 1 organ, "
                         f"2 tumour inside the organ); dataset.json declares {[int(v) for v in label_manager.all_labels]}")


def cases_with_tumour_outside_organ(dataset, identifiers: List[str], border: int = 2) -> tuple:
    """Reads the preprocessed cases (nnU-Net dataset class, lazily) and returns (cases with a tumour, cases whose
    tumour has no organ voxel within ``border`` voxels of its (sampled) extent).

    Uses the foreground locations nnU-Net's preprocessing stored per case (``class_locations``), so only the
    region around each tumour is read."""
    with_tumour, outside = [], []
    for identifier in identifiers:
        _, seg, _, properties = dataset.load_case(identifier)
        locations = properties.get("class_locations", {}).get(2)
        if locations is None or len(locations) == 0:
            continue
        with_tumour.append(identifier)
        coords = np.asarray(locations)[:, 1:]  # first column: channel
        lo = np.maximum(coords.min(0) - border, 0)
        hi = coords.max(0) + border + 1
        region = np.asarray(seg[(0, *[slice(int(a), int(b)) for a, b in zip(lo, hi)])])
        if not (region == 1).any():
            outside.append(identifier)
    return with_tumour, outside


def check_tumour_inside_organ(dataset, identifiers: List[str], dataset_name: str) -> None:
    with_tumour, outside = cases_with_tumour_outside_organ(dataset, identifiers)
    if not with_tumour:
        raise ValueError(f"{dataset_name}: no training case contains tumour voxels (label 2); the cascade needs "
                         f"tumours inside an organ (label 1)")
    if outside:
        raise ValueError(f"{dataset_name}: in {len(outside)} of {len(with_tumour)} cases with a tumour, label 2 does "
                         f"not touch organ label 1 (the tumour must lie inside the organ): {', '.join(outside[:20])}")
