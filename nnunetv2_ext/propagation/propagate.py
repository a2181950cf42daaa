"""Propagation of reference masks through a volume (Pham et al. §2.2, Fig. 3): :func:`propagate_volume`.

Memory of every step: all kept reference slices (image + the reference model's mask) and the slice just segmented
on the way (image + its predicted probability), as STCN keeps the first frame and the previous one. Each chain of
:func:`~nnunetv2_ext.propagation.references.propagation_plan` runs outward from its reference; a slice reached from
two references gets the mean of the two probabilities. Reference slices keep their reference masks.
"""
from __future__ import annotations

from typing import Dict

import numpy as np
import torch
import torch.nn.functional as F

from nnunetv2_ext.propagation.references import propagation_plan


def _pad_to(x: torch.Tensor, multiple: int):
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    return F.pad(x, (0, pw, 0, ph), mode="replicate") if (ph or pw) else x, (h, w)


@torch.no_grad()
def propagate_volume(net, volume: np.ndarray, reference_masks: Dict[int, np.ndarray],
                     device: torch.device = torch.device("cpu")) -> np.ndarray:
    """volume (C, Z, H, W) (normalised as in training), reference masks {slice: (H, W) bool} -> probability
    (Z, H, W) float32 of the label on every slice."""
    c, z, h, w = volume.shape
    if not reference_masks:
        raise ValueError("propagation needs at least one reference mask")
    net.eval()
    stride = getattr(net, "total_stride", 8)

    def frame(k: int) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(volume[:, k], dtype=np.float32))[None].to(device)
        return _pad_to(x, stride)[0]

    def mask_tensor(m) -> torch.Tensor:
        t = torch.as_tensor(np.asarray(m, dtype=np.float32))[None, None].to(device)
        return _pad_to(t, stride)[0]

    ref_keys, ref_values = [], []
    for k in sorted(reference_masks):
        x = frame(k)
        key, _, features = net.encode_key(x)
        ref_keys.append(key)
        ref_values.append(net.encode_value(x, features[-1], mask_tensor(reference_masks[k])))
    total = np.zeros((z, h, w), np.float32)
    count = np.zeros(z, np.int32)
    for k, m in reference_masks.items():
        total[k], count[k] = np.asarray(m, np.float32), 1
    for chain in propagation_plan(z, list(reference_masks)):
        previous = None  # (key, value) of the slice just segmented
        for k, _ in chain:
            x = frame(k)
            key, query_value, features = net.encode_key(x)
            keys = ref_keys + ([previous[0]] if previous else [])
            values = ref_values + ([previous[1]] if previous else [])
            logits = net.segment(key, query_value, features, torch.stack(keys, 2), torch.stack(values, 2))
            prob = torch.sigmoid(logits)
            total[k] += prob[0, 0, :h, :w].float().cpu().numpy()
            count[k] += 1
            previous = (key, net.encode_value(x, features[-1], prob))
    return total / np.maximum(count, 1)[:, None, None]
