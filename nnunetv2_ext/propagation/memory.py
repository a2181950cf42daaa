"""The space-time memory read of the propagation module (Pham et al. §2.2, after STCN: Cheng et al., "Rethinking
Space-Time Networks with Improved Memory Coverage for Efficient Video Object Segmentation", NeurIPS 2021, Eq. 1-2 and
its supplementary; reference code ``hkchengrex/STCN``, ``model/network.py: MemoryReader``, MIT).

Affinity between memory position i and query position j: the negative squared Euclidean distance of their keys,
``S_ij = -||k_i^M - k_j^Q||^2 / sqrt(C_k)``, normalised by a softmax over the memory positions i. Expanding the square,
``-||a - b||^2 = 2 a.b - ||a||^2 - ||b||^2``, and ``||b||^2`` (the query's) is the same for every i, so it cancels in
the softmax: ``W_ij = softmax_i((2 a_i.b_j - ||a_i||^2) / sqrt(C_k))`` - what STCN computes. Readout:
``v_j = sum_i W_ij V_i`` over all memory frames.

Shapes: memory keys (B, Ck, T, H, W), query keys (B, Ck, H, W), memory values (B, Cv, T, H, W); affinity
(B, T*H*W, H*W); readout (B, Cv, H, W).
"""
from __future__ import annotations

import math

import torch


def l2_affinity(memory_keys: torch.Tensor, query_keys: torch.Tensor) -> torch.Tensor:
    """Softmax over the memory of the negative squared Euclidean key distance / sqrt(Ck) (module docstring)."""
    if memory_keys.ndim != 5 or query_keys.ndim != 4:
        raise ValueError(f"memory keys (B, Ck, T, H, W) and query keys (B, Ck, H, W) expected, got "
                         f"{tuple(memory_keys.shape)} and {tuple(query_keys.shape)}")
    b, ck = memory_keys.shape[:2]
    mk = memory_keys.flatten(2)                          # B, Ck, THW
    qk = query_keys.flatten(2)                           # B, Ck, HW
    a_sq = mk.pow(2).sum(1).unsqueeze(2)                 # B, THW, 1
    ab = mk.transpose(1, 2) @ qk                         # B, THW, HW
    return torch.softmax((2 * ab - a_sq) / math.sqrt(ck), dim=1)


def readout(affinity: torch.Tensor, memory_values: torch.Tensor) -> torch.Tensor:
    """``sum_i W_ij V_i``: (B, THW, HW) affinity and (B, Cv, T, H, W) values -> (B, Cv, H, W)."""
    b, cv, t, h, w = memory_values.shape
    if affinity.shape[1] != t * h * w:
        raise ValueError(f"affinity over {affinity.shape[1]} memory positions, values have {t * h * w}")
    return (memory_values.reshape(b, cv, t * h * w) @ affinity).reshape(b, cv, h, w)
