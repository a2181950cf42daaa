"""The two-stage network of the cascade tumour variant (Qiu et al., "A deep learning-based cascade algorithm for
pancreatic tumor segmentation", Front. Oncol. 2024), dimension-agnostic (2d and 3d), built from nnU-Net plans.

:class:`CascadeTumorNet`: stage 1 (the plans' U-Net, organ) -> organ box on the whole image (+ K) -> crop, zoomed to
stage 2's patch -> salient change prior -> stage 2 (tumour, :class:`~nnunetv2_ext.cascade.blocks.TumourStageNet`) ->
pasted back; returns 3-class logits (background, organ, tumour). Training: on nnU-Net's patch. Prediction: on the
whole case (:meth:`CascadeTumorNet.predict_case_logits`, see :mod:`nnunetv2_ext.nnunet_adapters.predictor`). The
network does no I/O: a case's prediction returns its record, which the predictor adapter logs and writes.
The blocks (attention, localisation, focusing, dual-branch encoder) are in :mod:`nnunetv2_ext.cascade.blocks`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from nnunetv2_ext.cascade.blocks import TumourStageNet
from nnunetv2_ext.two_stage.boxes import (Box, bounding_box, case_boxes, fit_box_to_patch, format_box, grow_box,
                                          jitter_margin, largest_component, normalise_margin, whole_box)
from nnunetv2_ext.two_stage.crop import crop_and_resize, resize_and_paste, resize_to
from nnunetv2_ext.nnunet_adapters.predictor import CaseContext, CasePrediction, mirrored, sliding_window
from nnunetv2_ext.two_stage.prior import SalientChangeModule

EMPTY_ORGAN_FALLBACKS = ("no_tumour", "whole_image")
PREDICTION_LOG = "cascade_prediction_log.jsonl"


@dataclass
class CascadeAuxiliary:
    """What the cascade loss needs besides the 3-class logits; recorded by :class:`CascadeTumorNet` per forward.

    ``boxes[b]``: crop box of sample b in patch voxels (margin and aspect fit included; None: stage 2 skipped);
    ``cropped``: indices of the samples stage 2 ran on; ``location_map`` (n, 1, *deepest) and ``focus_maps``
    (coarsest to finest, (n, 1, *level)) are stage 2's outputs for those samples, on crops resampled to
    ``stage2_size``."""
    organ_logits: torch.Tensor
    boxes: List[Optional[Box]]
    cropped: List[int]
    stage2_size: Tuple[int, ...]
    location_map: Optional[torch.Tensor] = None
    focus_maps: List[torch.Tensor] = field(default_factory=list)
    stage2_enabled: bool = True


class CascadeTumorNet(nn.Module):
    """Organ stage, then tumour stage on the organ box, in one module.

    Crop geometry (:meth:`crop_box`): bounding box of the organ mask on the whole image it is given, grown by
    ``crop_margin`` (K voxels per side), grown to the aspect ratio of ``stage2_patch_size`` and resampled (linear) to
    exactly that size - a zoom ``min(max_zoom, patch / box)`` that magnifies small organs ("small target, large
    crop"; boxes larger than the patch are shrunk onto it). The crop of the image is multiplied by the
    :class:`SalientChangeModule` weight of stage 1's organ probability (cropped and resampled the same way) when the
    prior is on; stage 2's finest map is resampled back to the box and pasted (``-fill_logit`` outside).
    Output: log-probabilities of (background, organ, tumour) = ((1-t)(1-o), (1-t)o, t) with ``o`` stage 1's organ
    probability and ``t`` stage 2's tumour probability - ordinary 3-class logits for nnU-Net.

    - :meth:`forward` (training, nnU-Net's online validation): on the patch; boxes from the reference organ mask set
      by :meth:`set_reference_organ` (steps with reference boxes) or stage 1's argmax. Per sample, one box (2d: the
      slice; 3d: the patch volume). The data loader of the trainer centres foreground patches on the whole case's
      organ box, so the patch holds the whole organ wherever it fits.
    - :meth:`predict_case_logits` (prediction): stage 1 over the whole case (nnU-Net's sliding window, mirroring),
      the organ box on the whole case (2d: per slice), stage 2 on each crop; per-case log line and JSON record.

    A sample / case without any organ voxel: ``empty_organ_fallback='no_tumour'`` (default) skips stage 2 (empty
    tumour label; a warning naming the case at prediction), ``'whole_image'`` runs stage 2 on the whole image.

    Args:
        stage1: network (B, C_in, *S) -> (B, 2, *S) organ logits (the plans' U-Net without deep supervision).
        stage2: :class:`TumourStageNet`.
        salient_change: :class:`SalientChangeModule`.
        crop_margin: K, voxels added on each side of the organ box (int or one per cropped axis).
        stage2_patch_size: input size of stage 2 (the plans' patch size; divisible by stage 2's total stride).
        max_zoom: largest magnification of the crop.
        box_jitter: in training, each side's margin is drawn from K * (1 +- box_jitter) (0: exactly K).
        largest_component: boxes from stage 1's prediction use its largest connected component only.
    """

    def __init__(self, stage1: nn.Module, stage2: TumourStageNet, salient_change: SalientChangeModule,
                 crop_margin, stage2_patch_size: Sequence[int], max_zoom: float = 4.0,
                 empty_organ_fallback: str = "no_tumour", fill_logit: float = 20.0, stage2_batch: int = 8,
                 box_jitter: float = 0.0, largest_component: bool = True):
        super().__init__()
        if empty_organ_fallback not in EMPTY_ORGAN_FALLBACKS:
            raise ValueError(f"empty_organ_fallback must be one of {EMPTY_ORGAN_FALLBACKS}, got "
                             f"{empty_organ_fallback!r}")
        self.stage1 = stage1
        self.stage2 = stage2
        self.salient_change = salient_change
        self.stage2_patch_size = tuple(int(p) for p in stage2_patch_size)
        bad = [p % s for p, s in zip(self.stage2_patch_size, stage2.total_stride) if p % s]
        if bad or len(self.stage2_patch_size) != len(stage2.total_stride):
            raise ValueError(f"stage 2 patch {self.stage2_patch_size} must be divisible by its total stride "
                             f"{stage2.total_stride}")
        self.crop_margin = normalise_margin(crop_margin, len(self.stage2_patch_size))
        self.max_zoom = float(max_zoom)
        self.empty_organ_fallback = empty_organ_fallback
        self.fill_logit = fill_logit
        self.stage2_batch = stage2_batch
        self.box_jitter = float(box_jitter)
        self.largest_component = bool(largest_component)
        # saved with the weights, so that inference uses the prior exactly as the last training step did
        self.register_buffer("prior_enabled", torch.tensor(True))
        self.register_buffer("prior_joint", torch.tensor(True))
        self._reference_organ: Optional[torch.Tensor] = None
        self.stage2_enabled = True
        self.record_auxiliary = False
        self.auxiliary: Optional[CascadeAuxiliary] = None
        self.reset_counters()

    # ------------------------------------------------------------------ state
    def set_prior(self, enabled: bool, joint: bool = True) -> None:
        """Prior on / off; ``joint``: stage 2's loss reaches stage 1 through it (else the prior is detached)."""
        self.prior_enabled.fill_(bool(enabled))
        self.prior_joint.fill_(bool(enabled and joint))

    def set_stage2_enabled(self, enabled: bool) -> None:
        """False: :meth:`forward` (training patches, online validation) does not run stage 2 (the stage-1
        pre-training step P); whole-case prediction always runs both stages."""
        self.stage2_enabled = bool(enabled)

    def set_reference_organ(self, organ_mask: Optional[torch.Tensor]) -> None:
        """Reference organ mask (B, *S) (bool) for the crop boxes of the next forward calls; None: boxes from stage
        1's own prediction."""
        self._reference_organ = organ_mask

    def reset_counters(self) -> None:
        self.num_patches = 0
        self.num_empty_organ_patches = 0
        self.num_truncated_organ_patches = 0

    # ------------------------------------------------------------------ pieces
    def stage1_logits(self, x: torch.Tensor) -> torch.Tensor:
        organ_logits = self.stage1(x)
        if isinstance(organ_logits, (list, tuple)):  # deep supervision left on by a caller
            organ_logits = organ_logits[0]
        return organ_logits

    def crop_box(self, organ_mask: torch.Tensor) -> Optional[Box]:
        """Crop box of one organ mask (*S) on the image it covers: bounding box + K (in training, K jittered by
        ``box_jitter``), fitted to stage 2's patch aspect; None if stage 2 is to be skipped (no organ, fallback
        'no_tumour')."""
        box = bounding_box(organ_mask)
        if box is None:
            if self.empty_organ_fallback == "no_tumour":
                return None
            return fit_box_to_patch(whole_box(organ_mask.shape), self.stage2_patch_size, self.max_zoom, 1e-6)[0]
        margin = jitter_margin(self.crop_margin, len(box), self.box_jitter) if (
            self.training and self.box_jitter > 0) else self.crop_margin
        return fit_box_to_patch(grow_box(box, margin), self.stage2_patch_size, self.max_zoom, 1e-6)[0]

    def stage1_mask(self, organ_logits: torch.Tensor, channel_dim: int = 1) -> torch.Tensor:
        """Organ mask from stage-1 logits: argmax over ``channel_dim``; with ``largest_component`` only the largest
        connected component of each sample (channel_dim 1: per batch entry; 0: the whole case, in 3d also for the
        2d configuration's stacked slices)."""
        mask = organ_logits.detach().argmax(channel_dim) == 1
        if not self.largest_component:
            return mask
        if channel_dim == 1:
            return torch.stack([largest_component(m) for m in mask])
        return largest_component(mask)

    def tumour_stage(self, image: torch.Tensor, organ_probability: torch.Tensor, boxes: List[Optional[Box]],
                     mirror_axes: Optional[Sequence[int]] = None):
        """Stage 2 on the boxes of a batch: image (N, C, *S), organ probability (N, 1, *S), one box (or None) per
        sample -> (tumour logit (N, 1, *S), location map, focus maps, indices of the cropped samples)."""
        size = self.stage2_patch_size
        spatial = image.shape[2:]
        cropped = [i for i, b in enumerate(boxes) if b is not None]
        empty = image.new_full((1, 1, *spatial), -self.fill_logit, dtype=torch.float32)
        if not cropped:
            return empty.expand(image.shape[0], *empty.shape[1:]).clone(), None, [], cropped
        crops = torch.cat([crop_and_resize(image[i:i + 1], boxes[i], size) for i in cropped])
        if bool(self.prior_enabled):
            prior = torch.cat([crop_and_resize(organ_probability[i:i + 1], boxes[i], size) for i in cropped])
            if not bool(self.prior_joint):
                prior = prior.detach()
            crops = self.salient_change(crops, prior.to(crops.dtype))
        if mirror_axes:
            def final_map(t):
                return resize_to(self.stage2(t)[1][-1], size)
            final, location_map, focus_maps = mirrored(final_map, mirror_axes)(crops), None, []
        else:
            location_map, focus_maps = self.stage2(crops)
            final = resize_to(focus_maps[-1], size)
        pasted, j = [], 0
        for i, box in enumerate(boxes):
            if box is None:
                pasted.append(empty)
            else:
                pasted.append(resize_and_paste(final[j:j + 1].float(), box, spatial, -self.fill_logit))
                j += 1
        return torch.cat(pasted), location_map, focus_maps, cropped

    def _unused_parameters_anchor(self, stage2_ran: bool) -> torch.Tensor:
        """0 times the parameters this forward did not use (the prior when it is off, stage 2 when no sample had a
        box, stage 1's unused deep-supervision heads), so that every parameter takes part in the graph as
        DistributedDataParallel requires."""
        modules = [] if stage2_ran and bool(self.prior_enabled) else [self.salient_change]
        decoder = getattr(self.stage1, "decoder", None)
        if decoder is not None and not getattr(decoder, "deep_supervision", True):
            modules.extend(list(decoder.seg_layers)[:-1])  # deep-supervision heads of a U-Net built without it
        if not stage2_ran:
            modules.append(self.stage2)
        params = [p for m in modules for p in m.parameters() if p.requires_grad]
        if not params:
            return torch.zeros((), device=self.prior_enabled.device)
        return sum(p.sum() for p in params) * 0

    @staticmethod
    def combine(organ_log_prob: torch.Tensor, tumour_logit: torch.Tensor) -> torch.Tensor:
        """(B, 2, *S) organ log-probabilities and (B, 1, *S) tumour logit -> (B, 3, *S) log-probabilities."""
        not_tumour = F.logsigmoid(-tumour_logit)
        return torch.cat([not_tumour + organ_log_prob[:, :1], not_tumour + organ_log_prob[:, 1:],
                          F.logsigmoid(tumour_logit)], dim=1)

    # ------------------------------------------------------------------ training: one patch
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = x.shape[2:]
        organ_logits = self.stage1_logits(x)
        organ_log_prob = torch.log_softmax(organ_logits.float(), dim=1)
        if self._reference_organ is not None:
            organ_masks = self._reference_organ.to(x.device).bool()
            if tuple(organ_masks.shape) != (x.shape[0], *spatial):
                raise ValueError(f"reference organ mask has shape {tuple(organ_masks.shape)}, expected "
                                 f"{(x.shape[0], *spatial)}")
        else:
            organ_masks = self.stage1_mask(organ_logits, 1)
        boxes = [self.crop_box(m) for m in organ_masks] if self.stage2_enabled else [None] * len(organ_masks)
        self.num_patches += len(boxes)
        self.num_empty_organ_patches += sum(not bool(m.any()) for m in organ_masks)
        self.num_truncated_organ_patches += sum(_touches_border(m) for m in organ_masks)
        tumour_logit, location_map, focus_maps, cropped = self.tumour_stage(x, organ_log_prob[:, 1:].exp(), boxes)
        if self.training and torch.is_grad_enabled():
            tumour_logit = tumour_logit + self._unused_parameters_anchor(bool(cropped))
        self.auxiliary = CascadeAuxiliary(organ_logits, boxes, cropped, self.stage2_patch_size, location_map,
                                          focus_maps, self.stage2_enabled) if self.record_auxiliary else None
        return self.combine(organ_log_prob, tumour_logit)

    # ------------------------------------------------------------------ prediction: the whole case
    def predict_case_logits(self, data: torch.Tensor, context: CaseContext) -> CasePrediction:
        """The whole preprocessed case (C, Z, Y, X) -> (3, Z, Y, X) log-probabilities: one stage-1 pass over the case
        (sliding window with nnU-Net's tiles, steps, Gaussian and mirroring), the organ box on the whole case (2d
        configuration: per slice), stage 2 on each crop. Returns the logits with one log line and one JSON record for
        ``cascade_prediction_log.jsonl`` in the output folder (written by the predictor adapter)."""
        crop_ndim = len(self.stage2_patch_size)
        patch = tuple(context.patch_size)
        if len(patch) != crop_ndim:
            raise ValueError(f"configuration patch {patch} and stage 2 patch {self.stage2_patch_size} differ in "
                             f"dimension")
        stage1 = mirrored(self.stage1_logits, context.mirror_axes)
        if crop_ndim == 2:
            def stage1_tile(t):
                return stage1(t[:, :, 0])[:, :, None]
            tile = (1, *patch)
        else:
            stage1_tile, tile = stage1, patch
        organ_logits = sliding_window(stage1_tile, data, tile, 2, context.tile_step_size, context.use_gaussian)
        organ_log_prob = torch.log_softmax(organ_logits, dim=0)
        organ = self.stage1_mask(organ_logits, 0)
        found = case_boxes(organ, crop_ndim, context.spacing)

        if crop_ndim == 2:
            slices = list(found.boxes) if (found.found or self.empty_organ_fallback == "no_tumour") else \
                list(range(data.shape[1]))
            tumour = data.new_full((data.shape[1], 1, *data.shape[2:]), -self.fill_logit, dtype=torch.float32)
            crop_boxes = {}
            for start in range(0, len(slices), self.stage2_batch):
                chunk = slices[start:start + self.stage2_batch]
                boxes = [self.crop_box(organ[z]) for z in chunk]
                crop_boxes.update({z: b for z, b in zip(chunk, boxes) if b is not None})
                image = data[:, chunk].transpose(0, 1)
                probability = organ_log_prob[1, chunk][:, None].exp()
                tumour[chunk] = self.tumour_stage(image, probability, boxes, context.mirror_axes)[0]
            tumour_logit = tumour.transpose(0, 1)
            ran = bool(crop_boxes)
        else:
            box = self.crop_box(organ)
            crop_boxes = {None: box} if box is not None else {}
            tumour_logit = self.tumour_stage(data[None], organ_log_prob[None, 1:].exp(), [box],
                                             context.mirror_axes)[0][0]
            ran = box is not None
        logits = self.combine(organ_log_prob[None], tumour_logit[None])[0]
        record, line = self._case_report(context, found, crop_boxes, ran, int((logits.argmax(0) == 2).sum()),
                                         data.shape[1:])
        return CasePrediction(logits, record, [line], PREDICTION_LOG)

    def _case_report(self, context: CaseContext, found, crop_boxes: Dict, ran: bool, tumour_voxels: int,
                     shape) -> Tuple[dict, str]:
        spacing = context.spacing
        crop_ndim = len(self.stage2_patch_size)
        crop_union = None
        if crop_boxes:
            boxes = list(crop_boxes.values())
            crop_union = tuple((min(b[a][0] for b in boxes), max(b[a][1] for b in boxes)) for a in range(crop_ndim))
            if crop_ndim == 2:
                zs = sorted(crop_boxes)
                crop_union = ((zs[0], zs[-1] + 1), *crop_union)
        record = {
            "case": context.case_name, "organ_found": found.found, "tumour_stage_ran": ran,
            "configuration_dims": crop_ndim, "image_shape": [int(s) for s in shape],
            "spacing_mm": list(spacing) if spacing is not None else None,
            "crop_margin_voxels": list(self.crop_margin),
            "organ_box_voxels": [list(b) for b in found.union] if found.union else None,
            "organ_box_mm": list(found.union_mm) if found.union_mm else None,
            "crop_box_voxels": [list(b) for b in crop_union] if crop_union else None,
            "slices_with_organ": len(found.boxes) if crop_ndim == 2 else None,
            "tumour_voxels": tumour_voxels,
        }
        if not found.found:
            line = (f"WARNING: Cascade: {context.case_name}: stage 1 found no organ; "
                    + ("tumour label left empty (tumour stage not run)" if not ran else
                       "fallback 'whole_image': tumour stage ran on the whole image"))
        else:
            where = f" on {len(found.boxes)} slices" if crop_ndim == 2 else ""
            line = (f"Cascade: {context.case_name}: stage 1 found the organ{where}; organ box "
                    f"{format_box(found.union, spacing)}; crop box (K = {self.crop_margin} voxels) "
                    f"{format_box(crop_union)}; tumour stage ran, {tumour_voxels} tumour voxels")
        return record, line


def _touches_border(mask: torch.Tensor) -> bool:
    """Whether a non-empty mask (*S) has a voxel on the border of its array (its box may be cut by the patch)."""
    if not bool(mask.any()):
        return False
    for axis in range(mask.ndim):
        if bool(mask.select(axis, 0).any()) or bool(mask.select(axis, mask.shape[axis] - 1).any()):
            return True
    return False
