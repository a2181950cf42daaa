"""Which slices of which training case are positive, numbered as global units.

PNSS needs the exact positive slices of every training case. nnU-Net's ``class_locations`` are a subsample of the
foreground voxels and can miss slices, so we read the preprocessed segmentations once and cache the result next to
them (``nnunetv2_ext_slice_info_<configuration folder>.json`` in the dataset's preprocessed folder: nnU-Net infers
the dataset format from the file endings inside the configuration folder, so nothing of ours may go there). Entries
are keyed by file size and modification time, so re-preprocessing invalidates them.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from nnunetv2_ext.sampling.pnss import positive_block, select_slabs

CACHE_PREFIX = "nnunetv2_ext_slice_info_"
_SEG_FILE_CANDIDATES = ("{}_seg.b2nd", "{}_seg.npy", "{}.npz")


@dataclass
class SliceTable:
    """Training cases (in loader order) with their slice count and positive block (see :mod:`pnss`).

    ``positive_slices`` (per case, the indices of slices with foreground; optional) gives :attr:`positive`, the
    per-unit foreground flag. Without it, every slice of a positive block counts as positive."""

    identifiers: List[str]
    num_slices: np.ndarray
    first: np.ndarray
    k: np.ndarray
    positive_slices: Optional[List[Sequence[int]]] = None

    def __post_init__(self):
        self.num_slices = np.asarray(self.num_slices, np.int64)
        self.first = np.asarray(self.first, np.int64)
        self.k = np.asarray(self.k, np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.num_slices)]).astype(np.int64)
        self.case_index = {c: i for i, c in enumerate(self.identifiers)}
        self.positive = np.zeros(self.num_units, bool)
        if self.positive_slices is None:
            self.positive[:] = self.selected_mask(0.0)
        else:
            for c, z in enumerate(self.positive_slices):
                self.positive[self.offsets[c] + np.asarray(z, np.int64)] = True

    @property
    def num_units(self) -> int:
        return int(self.offsets[-1])

    def unit(self, case: int, z: int) -> int:
        return int(self.offsets[case] + z)

    def case_and_slice(self, units: np.ndarray):
        """(case index, slice index) arrays for global unit indices."""
        units = np.asarray(units, np.int64)
        case = np.searchsorted(self.offsets, units, side="right") - 1
        return case, units - self.offsets[case]

    def slabs(self, r: float):
        """(start, stop) per case of the PNSS selection at ratio ``r``."""
        return select_slabs(self.num_slices, self.first, self.k, r)

    def selected_mask(self, r: float) -> np.ndarray:
        """Boolean mask over all units: selected by PNSS at ratio ``r``."""
        start, stop = self.slabs(r)
        z = np.arange(self.num_units) - np.repeat(self.offsets[:-1], self.num_slices)
        return (z >= np.repeat(start, self.num_slices)) & (z < np.repeat(stop, self.num_slices))

    def signature(self) -> dict:
        """What a checkpoint stores to check it belongs to the same training set."""
        return {"identifiers": list(self.identifiers), "num_slices": self.num_slices.tolist()}


def _seg_file(folder: str, identifier: str) -> str:
    for pattern in _SEG_FILE_CANDIDATES:
        f = os.path.join(folder, pattern.format(identifier))
        if os.path.isfile(f):
            return f
    raise FileNotFoundError(
        f"PNSS/HESS needs the segmentation of training case '{identifier}' to find its positive slices, but none of "
        f"{[p.format(identifier) for p in _SEG_FILE_CANDIDATES]} exists in {folder}. Re-run "
        f"nnUNetv2_plan_and_preprocess for this configuration.")


def _positive_slices(seg, ignore_label: Optional[int], chunk: int = 32) -> np.ndarray:
    """Per-slice 'contains a foreground label' along axis 0 of a (1, z, y, x) segmentation, read in chunks."""
    n = seg.shape[1]
    out = np.zeros(n, bool)
    for z0 in range(0, n, chunk):
        s = np.asarray(seg[0, z0:z0 + chunk])
        fg = s > 0
        if ignore_label is not None:
            fg &= s != ignore_label
        out[z0:z0 + chunk] = fg.reshape(fg.shape[0], -1).any(1)
    return out


def build_slice_table(dataset, identifiers: Sequence[str], folder: str, ignore_label: Optional[int],
                      log=print) -> SliceTable:
    """Reads (or takes from the cache) the positive block of every case; ``dataset`` is an nnU-Net dataset object."""
    folder = os.path.normpath(folder)
    cache_file = os.path.join(os.path.dirname(folder), CACHE_PREFIX + os.path.basename(folder) + ".json")
    cache: Dict[str, dict] = {}
    if os.path.isfile(cache_file):
        try:
            with open(cache_file) as f:
                cache = json.load(f)
        except (OSError, json.JSONDecodeError):
            cache = {}  # a broken cache is rebuilt, never trusted
    changed = False
    num_slices, first, k, positive = [], [], [], []
    for ident in identifiers:
        st = os.stat(_seg_file(folder, ident))
        key = f"{ident}|ignore={ignore_label}"
        entry = cache.get(key)
        if entry is None or entry["size"] != st.st_size or entry["mtime"] != st.st_mtime_ns or "positive" not in entry:
            _, seg, _, _ = dataset.load_case(ident)
            if seg is None or len(seg.shape) != 4:
                raise RuntimeError(f"PNSS/HESS: preprocessed segmentation of case '{ident}' in {folder} is missing "
                                   f"or not (1, z, y, x): shape {getattr(seg, 'shape', None)}")
            pos = _positive_slices(seg, ignore_label)
            f0, kk = positive_block(pos)
            entry = {"size": st.st_size, "mtime": st.st_mtime_ns, "num_slices": len(pos), "first": f0, "k": kk,
                     "num_positive": int(pos.sum()), "positive": np.flatnonzero(pos).tolist()}
            cache[key] = entry
            changed = True
        num_slices.append(entry["num_slices"])
        first.append(entry["first"])
        k.append(entry["k"])
        positive.append(entry["positive"])
    if changed:
        tmp = cache_file + f".tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(cache, f)
        os.replace(tmp, cache_file)  # atomic: concurrent trainings never read half a file
        log(f"PNSS/HESS: positive slices of {len(identifiers)} training cases computed and cached in {cache_file}")
    return SliceTable(list(identifiers), np.array(num_slices), np.array(first), np.array(k), positive)
