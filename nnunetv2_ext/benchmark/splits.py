"""Cross-validation folds by patient (or any grouping of cases), written as nnU-Net's ``splits_final.json``.

nnU-Net splits by case (``generate_crossval_split``: KFold over the sorted case ids, seed 12345). With several cases
per patient (the NIH slices: 1-10 slices per patient; follow-up scans) that puts slices of one patient in training and
validation at once. Here nnU-Net's own function splits the sorted *groups* (same KFold, same seed), and every case
goes where its group goes. A grouping is a case -> group map (JSON) or a regular expression whose first group (or
whole match) names the group, e.g. ``^(PANCREAS_\\d+)_`` for ``PANCREAS_0001_1042``.
"""
from __future__ import annotations

import json
import os
import re
from typing import Dict, List, Mapping, Optional, Sequence


class SplitError(ValueError):
    """A grouping that cannot give the folds (the message names the case or parameter)."""


def groups_from_regex(cases: Sequence[str], pattern: str) -> Dict[str, str]:
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise SplitError(f"--group-regex {pattern!r} is not a regular expression: {e}") from None
    out = {}
    for c in cases:
        m = rx.search(c)
        if m is None:
            raise SplitError(f"case {c} does not match --group-regex {pattern!r}")
        out[c] = m.group(1) if rx.groups else m.group(0)
    return out


def groups_from_file(cases: Sequence[str], path: str) -> Dict[str, str]:
    try:
        with open(path, encoding="utf-8") as f:
            mapping = json.load(f)
    except (OSError, ValueError) as e:
        raise SplitError(f"--groups {path}: cannot read a JSON case -> group map ({e})") from None
    if not isinstance(mapping, dict):
        raise SplitError(f"--groups {path}: expected a JSON object mapping each case to its group")
    missing = [c for c in cases if c not in mapping]
    if missing:
        raise SplitError(f"--groups {path} has no group for {len(missing)} case(s), e.g. {', '.join(missing[:5])}")
    return {c: str(mapping[c]) for c in cases}


def grouped_splits(groups: Mapping[str, str], n_splits: int = 5, seed: int = 12345) -> List[Dict[str, List[str]]]:
    """nnU-Net's split (``generate_crossval_split``) applied to the groups; a group's cases stay together."""
    from nnunetv2.utilities.crossval_split import generate_crossval_split
    names = sorted(set(groups.values()))
    if n_splits < 2:
        raise SplitError(f"the number of folds must be >= 2, got {n_splits}")
    if len(names) < n_splits:
        raise SplitError(f"{len(names)} group(s) cannot fill {n_splits} folds: at least one fold would have no "
                         f"validation case (groups: {', '.join(names[:10])})")
    out = []
    for fold in generate_crossval_split(names, seed=seed, n_splits=n_splits):
        val_groups = set(fold["val"])
        out.append({"train": sorted(c for c, g in groups.items() if g not in val_groups),
                    "val": sorted(c for c, g in groups.items() if g in val_groups)})
    return out


def write_splits(preprocessed_dataset_folder: str, splits: List[Dict[str, List[str]]]) -> str:
    """Writes ``splits_final.json`` where nnU-Net's training reads it. An existing file is kept when it holds the same
    folds; a different one is never replaced (SplitError): it may be the user's own split."""
    path = os.path.join(preprocessed_dataset_folder, "splits_final.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            existing = json.load(f)
        same = len(existing) == len(splits) and all(
            sorted(a["train"]) == b["train"] and sorted(a["val"]) == b["val"] for a, b in zip(existing, splits))
        if same:
            return path
        raise SplitError(f"{path} exists with other folds than the grouping gives; it is not replaced (it may be your "
                         f"own split): remove it yourself to use the grouped folds, or drop the grouping")
    os.makedirs(preprocessed_dataset_folder, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(splits, f, indent=1)
    return path


def case_groups(cases: Sequence[str], group_regex: Optional[str] = None,
                groups_file: Optional[str] = None) -> Optional[Dict[str, str]]:
    if group_regex and groups_file:
        raise SplitError("give --group-regex or --groups, not both")
    if group_regex:
        return groups_from_regex(cases, group_regex)
    if groups_file:
        return groups_from_file(cases, groups_file)
    return None
