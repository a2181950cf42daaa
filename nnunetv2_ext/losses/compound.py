"""nnU-Net's region loss plus weighted structural terms, called as ``loss(output, target)`` like nnU-Net's losses."""
from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Tuple, Union

import torch
from torch import nn

Schedule = Callable[[int, int], float]


class RegionAndStructuralLoss(nn.Module):
    """L = L_R(output, target) + Σ_k w_k(epoch) · L_k(output[0], seg[0], sdm).

    ``L_R`` is nnU-Net's Dice + CE, deep-supervision wrapped as nnU-Net builds it (all scales, nnU-Net's weights).
    The structural terms ``L_k`` act on the full-resolution output only (they refine boundaries, which the coarse
    outputs cannot represent). A term whose weight is 0 in the current epoch is not computed.

    Target layout (what nnU-Net's data loader delivers, plus our worker transform):
        with deep supervision: list ``[seg_0, ..., seg_K]`` (one (B, 1, *spatial_k) label map per output scale) and,
        if ``uses_sdm``, one more entry: the full-resolution signed distance maps (B, C-1, *spatial_0)
        (:class:`~nnunetv2_ext.transforms.SignedDistanceMapTransform`). So ``target[0]`` stays the full-resolution
        label map, as nnU-Net's validation step and wrappers expect.
        without deep supervision: a label map (B, 1, *spatial), or ``[seg, sdm]`` if ``uses_sdm``.

    Args:
        region_loss: called as ``region_loss(output, segs)`` (nnU-Net's loss from ``nnUNetTrainer._build_loss``).
        terms: name -> (module called as ``module(logits, seg, sdm)``, schedule ``w(epoch, num_epochs)``).
        uses_sdm: whether the target carries the signed distance maps.

    The weights follow the epoch set by :meth:`set_epoch` (the trainer calls it at each epoch start; before the first
    call, epoch 0 of 1).
    """

    def __init__(self, region_loss: nn.Module, terms: Dict[str, Tuple[nn.Module, Schedule]], uses_sdm: bool):
        super().__init__()
        if not terms:
            raise ValueError("RegionAndStructuralLoss needs at least one structural term")
        self.region_loss = region_loss
        self.terms = nn.ModuleDict({name: module for name, (module, _) in terms.items()})
        self.schedules = {name: schedule for name, (_, schedule) in terms.items()}
        self.uses_sdm = uses_sdm
        self.epoch, self.num_epochs = 0, 1

    def set_epoch(self, epoch: int, num_epochs: int) -> None:
        for schedule in self.schedules.values():
            schedule(epoch, num_epochs)  # validates the pair
        self.epoch, self.num_epochs = int(epoch), int(num_epochs)

    def current_weights(self) -> Dict[str, float]:
        return {name: s(self.epoch, self.num_epochs) for name, s in self.schedules.items()}

    def split_target(self, output: Union[torch.Tensor, Sequence[torch.Tensor]],
                     target: Union[torch.Tensor, List[torch.Tensor]]):
        """(segmentation target as the region loss wants it, full-resolution label map, sdm or None)."""
        deep_supervision = isinstance(output, (list, tuple))
        if deep_supervision:
            n = len(output)
            expected = n + int(self.uses_sdm)
            if not isinstance(target, (list, tuple)) or len(target) != expected:
                raise ValueError(f"expected a target list of {expected} entries ({n} scales"
                                 f"{' + signed distance maps' if self.uses_sdm else ''}), got "
                                 f"{len(target) if isinstance(target, (list, tuple)) else type(target).__name__}")
            segs = list(target[:n])
            return segs, segs[0], (target[n] if self.uses_sdm else None)
        if self.uses_sdm:
            if not isinstance(target, (list, tuple)) or len(target) != 2:
                raise ValueError("expected the target [segmentation, signed distance maps]")
            return target[0], target[0], target[1]
        return target, target, None

    def forward(self, output, target) -> torch.Tensor:
        segs, seg_full, sdm = self.split_target(output, target)
        logits_full = output[0] if isinstance(output, (list, tuple)) else output
        total = self.region_loss(output, segs)
        for name, weight in self.current_weights().items():
            if weight != 0:
                total = total + weight * self.terms[name](logits_full, seg_full, sdm)
        return total
