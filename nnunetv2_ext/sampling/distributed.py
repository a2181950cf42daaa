"""Keeping PNSS/HESS state identical on all DDP ranks.

Every rank trains on its own random batches, so each rank scores different units. Before the hard set is chosen,
the ranks exchange their (unit, DSC) records; every rank then applies all of them in rank order and so holds the same
hardness table, the same hard set and the same mini-epoch plan (seeded by epoch). r(e) needs no exchange: it is a
function of the epoch.
"""
from __future__ import annotations

from typing import List, Tuple

import numpy as np
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def gather_scores(units: np.ndarray, dsc: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """All ranks' (unit, DSC) records, concatenated in rank order (identity without DDP)."""
    if not is_distributed():
        return units, dsc
    gathered: List = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (np.asarray(units, np.int64), np.asarray(dsc, np.float32)))
    return (np.concatenate([g[0] for g in gathered]), np.concatenate([g[1] for g in gathered]))


def gather_batch_sizes(batch_size: int) -> List[int]:
    """Per-rank batch sizes (nnU-Net may give ranks different ones), [batch_size] without DDP."""
    if not is_distributed():
        return [int(batch_size)]
    sizes: List = [None] * dist.get_world_size()
    dist.all_gather_object(sizes, int(batch_size))
    return [int(s) for s in sizes]


def rank_and_world() -> Tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if is_distributed() else (0, 1)
