"""Positive-negative subset selection (PNSS), Huang et al., Quant Imaging Med Surg 2022, Eq. 6-7 and L(alpha, beta).

Conventions (all indices 0-based along axis 0 of nnU-Net's preprocessed case, the axis its 2d configuration slices):

- A case has ``n`` slices. Its *positive block* runs from the first to the last slice that contains any foreground
  label: ``first`` .. ``last`` (``k = last - first + 1``). Negative slices inside gaps of the foreground stay in the
  block (they lie between organ slices, so they are as "near" as it gets; dropping them would also cut the block).
- Eq. 6-7 with 1-based ``l = first + 1``: ``n_below = ceil((l - 1) r) = ceil(first * r)`` negative slices are kept
  directly below the block and ``n_above = floor((n - l - k + 1) r) = floor((n - first - k) r)`` directly above.
  The selected slab is the half-open range ``[first - n_below, first + k + n_above)``.
- A case without foreground has no block; we place an empty block at its centre (``first = n // 2, k = 0``), so the
  same equations keep ``ceil(n//2 * r) + floor((n - n//2) r)`` central slices: all at r = 1, none at r = 0. Such a case
  then leaves training, which is the point of PNSS (it only contributes far negatives).
- The ratio follows L(alpha, beta): r starts at 1 and drops by alpha every beta epochs, never below ``r_min``
  (default 0, as in the paper).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Tuple

import numpy as np

# Guards ceil/floor against float noise such as 0.6 * 5 = 3.0000000000000004.
_EPS = 1e-9


@dataclass(frozen=True)
class PNSSSchedule:
    """L(alpha, beta) with a floor: ``r(epoch) = max(r_min, 1 - alpha * floor(epoch / beta))``."""

    alpha: float = 0.2
    beta: int = 5
    r_min: float = 0.0

    def __post_init__(self):
        if not (isinstance(self.alpha, (int, float)) and 0 < self.alpha <= 1):
            raise ValueError(f"PNSS alpha must be in (0, 1], got {self.alpha!r}")
        if not (isinstance(self.beta, int) and not isinstance(self.beta, bool) and self.beta >= 1):
            raise ValueError(f"PNSS beta must be an integer >= 1 (epochs), got {self.beta!r}")
        if not (isinstance(self.r_min, (int, float)) and 0 <= self.r_min <= 1):
            raise ValueError(f"PNSS r_min must be in [0, 1], got {self.r_min!r}")

    def ratio(self, epoch: int) -> float:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        r = 1.0 - self.alpha * (epoch // self.beta)
        return float(min(1.0, max(self.r_min, r, 0.0)))


def select_slab(num_slices: int, first: int, k: int, r: float) -> Tuple[int, int]:
    """Eq. 6-7: the selected slab ``[start, stop)`` of a case with ``num_slices`` slices whose positive block starts at
    ``first`` and has ``k`` slices (``k = 0``: no foreground, see the module docstring)."""
    if not 0 <= r <= 1:
        raise ValueError(f"r must be in [0, 1], got {r}")
    if k < 0 or first < 0 or first + k > num_slices:
        raise ValueError(f"inconsistent block first={first}, k={k} for {num_slices} slices")
    n_below = math.ceil(first * r - _EPS)
    n_above = math.floor((num_slices - first - k) * r + _EPS)
    return first - n_below, first + k + n_above


def select_slabs(num_slices: np.ndarray, first: np.ndarray, k: np.ndarray, r: float) -> Tuple[np.ndarray, np.ndarray]:
    """Vectorised :func:`select_slab` over cases; returns (start, stop) arrays."""
    num_slices, first, k = (np.asarray(a, dtype=np.int64) for a in (num_slices, first, k))
    n_below = np.ceil(first * r - _EPS).astype(np.int64)
    n_above = np.floor((num_slices - first - k) * r + _EPS).astype(np.int64)
    return first - n_below, first + k + n_above


def positive_block(positive_slices: np.ndarray) -> Tuple[int, int]:
    """(first, k) of the positive block from a per-slice boolean foreground vector (gaps included in the block)."""
    idx = np.flatnonzero(np.asarray(positive_slices, dtype=bool))
    n = len(positive_slices)
    if len(idx) == 0:
        return n // 2, 0
    return int(idx[0]), int(idx[-1] - idx[0] + 1)
