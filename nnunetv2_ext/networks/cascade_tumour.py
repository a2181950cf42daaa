"""Networks of the cascade tumour variant (Qiu et al., "A deep learning-based cascade algorithm for pancreatic tumor
segmentation", Front. Oncol. 2024), dimension-agnostic (2d and 3d), built from nnU-Net plans.

All modules take the convolution class of nnU-Net's plans (``nn.Conv2d`` / ``nn.Conv3d``) and, where they normalise,
the plans' norm and non-linearity, so they follow whatever the plans chose. Tensors are ``(B, C, *spatial)``.

- :class:`ChannelAttention`, :class:`SpatialAttention` (Eq. 5-8) and :class:`LocalisationModule`: non-local
  localisation on the deepest stage-2 features, giving the first tumour map.
- :class:`ContextExplorationBlock` and :class:`FocusModule` (Eq. 9): distraction mining on each decoder level.
- :class:`DualBranchEncoder` (Eq. 1-4): the plans' encoder plus a multi-scale branch (1x1 -> 3x3 and 5x5 -> 3x3
  paths), fused per level; from dynamic-network-architectures blocks.
- :class:`TumourStageNet`: stage 2 = encoder (the plans' first ``num_stages`` stages, or the dual-branch one) +
  localisation module + one focusing module per decoder level.
- :class:`CascadeTumorNet`: stage 1 (the plans' U-Net, organ) -> organ box on the whole image (+ K) -> crop, zoomed
  to stage 2's patch -> salient change prior -> stage 2 (tumour) -> pasted back; returns 3-class logits (background,
  organ, tumour). Training: on nnU-Net's patch. Prediction: on the whole case
  (:meth:`CascadeTumorNet.predict_case_logits`, see :mod:`nnunetv2_ext.two_stage.inference`).

:class:`ConvNormAct` is kept besides dynamic-network-architectures' ``ConvDropoutNormReLU`` because the context
exploration block needs dilated convolutions, which that block does not offer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.helper import get_matching_convtransp
from dynamic_network_architectures.building_blocks.simple_conv_blocks import ConvDropoutNormReLU
from torch import nn

from nnunetv2_ext.two_stage.boxes import (Box, bounding_box, case_boxes, fit_box_to_patch, format_box, grow_box,
                                          jitter_margin, largest_component, normalise_margin, whole_box)
from nnunetv2_ext.two_stage.crop import crop_and_resize, resize_and_paste, resize_to
from nnunetv2_ext.two_stage.inference import CaseContext, mirrored, sliding_window, write_case_record
from nnunetv2_ext.two_stage.prior import SalientChangeModule

EMPTY_ORGAN_FALLBACKS = ("no_tumour", "whole_image")
PREDICTION_LOG = "cascade_prediction_log.jsonl"


class ConvNormAct(nn.Sequential):
    """conv (same padding, optional dilation) -> norm -> non-linearity, with the plans' ops."""

    def __init__(self, conv_op, in_channels: int, out_channels: int, kernel_size: int, norm_op=None,
                 norm_op_kwargs=None, nonlin=None, nonlin_kwargs=None, dilation: int = 1):
        layers = [conv_op(in_channels, out_channels, kernel_size, padding=dilation * (kernel_size // 2),
                          dilation=dilation)]
        if norm_op is not None:
            layers.append(norm_op(out_channels, **(norm_op_kwargs or {})))
        if nonlin is not None:
            layers.append(nonlin(**(nonlin_kwargs or {})))
        super().__init__(*layers)


@dataclass
class PlansOps:
    """The ops of the plans' architecture, taken from its encoder (PlainConvEncoder / ResidualEncoder)."""
    conv_op: type
    norm_op: Optional[type] = None
    norm_op_kwargs: dict = field(default_factory=dict)
    nonlin: Optional[type] = None
    nonlin_kwargs: dict = field(default_factory=dict)

    @classmethod
    def from_encoder(cls, encoder: nn.Module) -> "PlansOps":
        return cls(encoder.conv_op, encoder.norm_op, encoder.norm_op_kwargs or {}, encoder.nonlin,
                   encoder.nonlin_kwargs or {})

    def block(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1) -> ConvNormAct:
        return ConvNormAct(self.conv_op, in_channels, out_channels, kernel_size, self.norm_op, self.norm_op_kwargs,
                           self.nonlin, self.nonlin_kwargs, dilation)

    def norm_act(self, channels: int) -> nn.Sequential:
        layers = []
        if self.norm_op is not None:
            layers.append(self.norm_op(channels, **self.norm_op_kwargs))
        if self.nonlin is not None:
            layers.append(self.nonlin(**self.nonlin_kwargs))
        return nn.Sequential(*layers)


class ChannelAttention(nn.Module):
    """Channel attention of the localisation module (Eq. 5-6): ``A = softmax(F F^T)`` over channels (C x C),
    ``out = gamma * A F + F`` with learnable ``gamma`` initialised to 1. Computed in float32 (the energies overflow
    float16 under autocast)."""

    def __init__(self):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        with torch.autocast(device_type=x.device.type, enabled=False):
            f = x.float().reshape(b, c, -1)
            attention = torch.softmax(f @ f.transpose(1, 2), dim=-1)
            out = (attention @ f).reshape(x.shape)
        return self.gamma * out.to(x.dtype) + x


class SpatialAttention(nn.Module):
    """Spatial attention of the localisation module (Eq. 7-8): query/key (C/8 channels) and value projections by
    1x1 convolutions, ``A = softmax(Q^T K)`` over positions (N x N, N = voxels of the deepest level),
    ``out = gamma * V A^T + F`` with ``gamma`` initialised to 1. Float32 as :class:`ChannelAttention`."""

    def __init__(self, conv_op, channels: int):
        super().__init__()
        reduced = max(channels // 8, 1)
        self.query = conv_op(channels, reduced, 1)
        self.key = conv_op(channels, reduced, 1)
        self.value = conv_op(channels, channels, 1)
        self.gamma = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        with torch.autocast(device_type=x.device.type, enabled=False):
            xf = x.float()
            q = self.query(xf).reshape(b, -1, xf[0, 0].numel())
            k = self.key(xf).reshape(b, q.shape[1], -1)
            v = self.value(xf).reshape(b, c, -1)
            attention = torch.softmax(q.transpose(1, 2) @ k, dim=-1)
            out = (v @ attention.transpose(1, 2)).reshape(x.shape)
        return self.gamma * out.to(x.dtype) + x


class LocalisationModule(nn.Module):
    """Non-local localisation (the paper's positioning of the tumour on the deepest features): channel attention,
    then spatial attention, then a ``map_kernel_size`` convolution (7 in the paper) to one tumour logit channel.

    Shapes: (B, C, *S) -> features (B, C, *S), map (B, 1, *S)."""

    def __init__(self, conv_op, channels: int, map_kernel_size: int = 7):
        super().__init__()
        self.channel_attention = ChannelAttention()
        self.spatial_attention = SpatialAttention(conv_op, channels)
        self.map = conv_op(channels, 1, map_kernel_size, padding=map_kernel_size // 2)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        features = self.spatial_attention(self.channel_attention(x))
        return features, self.map(features)


class ContextExplorationBlock(nn.Module):
    """Context exploration: 4 chained branches ``i = 0..3``, each ``reduce (1x1, C/4) -> KxK conv (K = 1, 3, 5, 7)
    -> 3x3 conv dilated by 1, 2, 4, 8``; branch i's input is its reduction plus branch i-1's output; the 4 outputs are
    concatenated and fused by a 1x1 conv back to C channels. Shapes: (B, C, *S) -> (B, C, *S)."""

    kernel_sizes = (1, 3, 5, 7)
    dilations = (1, 2, 4, 8)

    def __init__(self, ops: PlansOps, channels: int):
        super().__init__()
        branch = max(channels // 4, 1)
        self.reduce = nn.ModuleList([ops.block(channels, branch, 1) for _ in self.kernel_sizes])
        self.local = nn.ModuleList([ops.block(branch, branch, k) for k in self.kernel_sizes])
        self.dilated = nn.ModuleList([ops.block(branch, branch, 3, dilation=d) for d in self.dilations])
        self.fuse = ops.block(branch * len(self.kernel_sizes), channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs, previous = [], None
        for reduce, local, dilated in zip(self.reduce, self.local, self.dilated):
            branch_input = reduce(x) if previous is None else reduce(x) + previous
            previous = dilated(local(branch_input))
            outputs.append(previous)
        return self.fuse(torch.cat(outputs, dim=1))


class FocusModule(nn.Module):
    """Focusing module of one decoder level (Eq. 9).

    The higher (coarser) level's features are upsampled (transposed conv with the encoder's stride, then a conv
    block) to ``U``; the higher level's prediction, resized and passed through a sigmoid, gives foreground attention
    features ``F_fg = x * sigmoid(m)`` and background attention features ``F_bg = x * (1 - sigmoid(m))``; context
    exploration on each finds false-positive (``CE(F_fg)``) and false-negative (``CE(F_bg)``) distractions;
    ``R1 = act(norm(U - lambda * CE_fp(F_fg)))``, ``R2 = act(norm(R1 + gamma * CE_fn(F_bg)))`` with learnable
    ``lambda``, ``gamma`` initialised to 1; a ``map_kernel_size`` conv on ``R2`` gives the refined prediction.

    Args:
        ops: the plans' ops.
        channels: channels of this level's encoder features ``x``.
        higher_channels: channels of the higher level's features.
        upsample_stride: the encoder's stride between this level and the higher one.
    Shapes: x (B, channels, *S), higher (B, higher_channels, *S / stride), higher map (B, 1, any) ->
        features (B, channels, *S), map (B, 1, *S).
    """

    def __init__(self, ops: PlansOps, channels: int, higher_channels: int, upsample_stride: Sequence[int],
                 map_kernel_size: int = 7):
        super().__init__()
        transp = get_matching_convtransp(ops.conv_op)
        self.up = nn.Sequential(transp(higher_channels, channels, tuple(upsample_stride), tuple(upsample_stride)),
                                ops.block(channels, channels, 3))
        self.false_positive = ContextExplorationBlock(ops, channels)
        self.false_negative = ContextExplorationBlock(ops, channels)
        self.fp_weight = nn.Parameter(torch.ones(1))  # lambda of Eq. 9
        self.fn_weight = nn.Parameter(torch.ones(1))  # gamma of Eq. 9
        self.after_fp = ops.norm_act(channels)
        self.after_fn = ops.norm_act(channels)
        self.map = ops.conv_op(channels, 1, map_kernel_size, padding=map_kernel_size // 2)

    def forward(self, x: torch.Tensor, higher_features: torch.Tensor, higher_map: torch.Tensor
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        up = self.up(higher_features)
        attention = torch.sigmoid(resize_to(higher_map, x.shape[2:]))
        foreground, background = x * attention, x * (1 - attention)
        refined = self.after_fp(up - self.fp_weight * self.false_positive(foreground))
        refined = self.after_fn(refined + self.fn_weight * self.false_negative(background))
        return refined, self.map(refined)


def truncate_encoder(encoder: nn.Module, num_stages: Optional[int]) -> nn.Module:
    """The encoder's first ``num_stages`` resolution stages (in place; None or more than it has: unchanged). Works for
    dynamic-network-architectures' PlainConvEncoder and ResidualEncoder (``stages``, ``output_channels``,
    ``strides``, ``kernel_sizes``)."""
    n = len(encoder.stages)
    if num_stages is None or num_stages >= n:
        return encoder
    if num_stages < 2:
        raise ValueError(f"stage 2 needs at least 2 encoder stages, got num_stages={num_stages}")
    encoder.stages = nn.Sequential(*list(encoder.stages)[:num_stages])
    for name in ("output_channels", "strides", "kernel_sizes"):
        if hasattr(encoder, name):
            setattr(encoder, name, list(getattr(encoder, name))[:num_stages])
    return encoder


class MultiScaleBlock(nn.Module):
    """One stage of the multi-scale branch (Eq. 2-4): two paths on the same input, ``1x1 (stride) -> k`` and
    ``5x5 (stride) -> k`` (``k`` the plans' kernel of the stage; the 5 becomes 1 on axes where the plans' kernel is
    1, as for anisotropic 3d stages), each giving half of ``out_channels``, concatenated. Built from
    dynamic-network-architectures' ``ConvDropoutNormReLU`` with the plans' ops."""

    def __init__(self, encoder_ops: dict, in_channels: int, out_channels: int, stride, kernel_size):
        super().__init__()
        kernel = [int(k) for k in np.atleast_1d(kernel_size)]
        if len(kernel) == 1:
            kernel = kernel * (3 if encoder_ops["conv_op"] is nn.Conv3d else 2)
        large = [5 if k > 1 else 1 for k in kernel]
        half = out_channels // 2

        def block(i, o, k, s):
            return ConvDropoutNormReLU(encoder_ops["conv_op"], i, o, k, s, encoder_ops["conv_bias"],
                                       encoder_ops["norm_op"], encoder_ops["norm_op_kwargs"], None, None,
                                       encoder_ops["nonlin"], encoder_ops["nonlin_kwargs"])
        self.small = nn.Sequential(block(in_channels, half, 1, stride), block(half, half, kernel, 1))
        self.large = nn.Sequential(block(in_channels, out_channels - half, large, stride),
                                   block(out_channels - half, out_channels - half, kernel, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.small(x), self.large(x)], dim=1)


class DualBranchEncoder(nn.Module):
    """Dual-branch multi-scale encoder (Eq. 1-4, after the authors' released ``PFNet_stan.py`` / ``stan_part.py``):

    - branch A (Eq. 1): the plans' encoder (stacked ``k x k`` convolutions per stage);
    - branch B (Eq. 2-4): per stage a :class:`MultiScaleBlock` (``1x1 -> k`` and ``5x5 -> k`` paths concatenated) on
      branch B's previous output, with the same strides and widths as branch A;
    - per level the two are fused, ``F_s = ConvNormAct_1x1([A_s, B_s])`` -> the plans' width of that level.

    The released code concatenates the branches only at the bottleneck (its U-Net decoder then carries branch B to
    every level); our stage 2 has no U-Net decoder (the focusing modules read the encoder levels directly), so the
    fusion is done at every level. Exposes the encoder interface the focusing modules need (``output_channels``,
    ``strides``, ``conv_op``, norm / non-linearity, ``return_skips``). forward: (B, C_in, *S) -> list of fused
    features per level.
    """

    def __init__(self, encoder: nn.Module, input_channels: int):
        super().__init__()
        encoder.return_skips = True
        self.branch_a = encoder
        self.output_channels = list(encoder.output_channels)
        self.strides = [list(s) for s in encoder.strides]
        self.kernel_sizes = list(encoder.kernel_sizes)
        self.conv_op, self.norm_op, self.nonlin = encoder.conv_op, encoder.norm_op, encoder.nonlin
        self.norm_op_kwargs = encoder.norm_op_kwargs or {}
        self.nonlin_kwargs = encoder.nonlin_kwargs or {}
        self.return_skips = True
        ops = {"conv_op": self.conv_op, "conv_bias": getattr(encoder, "conv_bias", True), "norm_op": self.norm_op,
               "norm_op_kwargs": self.norm_op_kwargs, "nonlin": self.nonlin, "nonlin_kwargs": self.nonlin_kwargs}
        in_channels, branch, fuse = input_channels, [], []
        for c, s, k in zip(self.output_channels, self.strides, self.kernel_sizes):
            branch.append(MultiScaleBlock(ops, in_channels, c, s, k))
            fuse.append(ConvDropoutNormReLU(self.conv_op, 2 * c, c, 1, 1, ops["conv_bias"], self.norm_op,
                                            self.norm_op_kwargs, None, None, self.nonlin, self.nonlin_kwargs))
            in_channels = c
        self.branch_b = nn.ModuleList(branch)
        self.fuse = nn.ModuleList(fuse)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        skips_a = self.branch_a(x)
        out, b = [], x
        for a, block, fuse in zip(skips_a, self.branch_b, self.fuse):
            b = block(b)
            out.append(fuse(torch.cat([a, b], dim=1)))
        return out


class TumourStageNet(nn.Module):
    """Stage 2: an encoder, the localisation module on its deepest features and one focusing module per decoder
    level, deepest to finest.

    Args:
        encoder: a ``PlainConvEncoder`` / ``ResidualEncoder`` of dynamic_network_architectures as built from the plans
            (``return_skips`` is switched on here), or a :class:`DualBranchEncoder`.
        map_kernel_size: kernel of the prediction convolutions (7 in the paper).
        map_prior: initial tumour probability of every map (bias of the prediction convolutions; None: PyTorch's
            default initialisation).
    forward: ``(B, C_in, *S)`` with ``S`` divisible by :attr:`total_stride` -> (localisation map at the deepest
    resolution, [focus maps from the coarsest decoder level to the finest]); each map is (B, 1, *level size) logits.
    With the paper's 5 encoder levels there are 4 focusing levels (Eq. 13).
    """

    def __init__(self, encoder: nn.Module, map_kernel_size: int = 7, map_prior: Optional[float] = 0.01):
        super().__init__()
        encoder.return_skips = True
        self.encoder = encoder
        ops = PlansOps.from_encoder(encoder)
        channels = list(encoder.output_channels)
        strides = [list(s) for s in encoder.strides]
        self.total_stride = [int(v) for v in np.prod(np.array(strides), axis=0)]
        self.localisation = LocalisationModule(ops.conv_op, channels[-1], map_kernel_size)
        self.focus = nn.ModuleList([FocusModule(ops, channels[s], channels[s + 1], strides[s + 1], map_kernel_size)
                                    for s in reversed(range(len(channels) - 1))])
        if map_prior is not None:
            # the maps start at a tumour probability of map_prior instead of 0.5 (RetinaNet's prior initialisation):
            # otherwise the first steps push every logit far negative and the sigmoids saturate
            for conv in [self.localisation.map] + [f.map for f in self.focus]:
                nn.init.constant_(conv.bias, -float(np.log((1 - map_prior) / map_prior)))

    @property
    def num_focus_levels(self) -> int:
        return len(self.focus)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        skips = self.encoder(x)
        features, prediction = self.localisation(skips[-1])
        location_map, focus_maps = prediction, []
        for focus, skip in zip(self.focus, reversed(skips[:-1])):
            features, prediction = focus(skip, features, prediction)
            focus_maps.append(prediction)
        return location_map, focus_maps


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
        self.record_auxiliary = False
        self.auxiliary: Optional[CascadeAuxiliary] = None
        self.case_logger = None  # callable(str) for the per-case lines at prediction (print when None)
        self.last_case_record: Optional[dict] = None
        self.reset_counters()

    # ------------------------------------------------------------------ state
    def set_prior(self, enabled: bool, joint: bool = True) -> None:
        """Prior on / off; ``joint``: stage 2's loss reaches stage 1 through it (else the prior is detached)."""
        self.prior_enabled.fill_(bool(enabled))
        self.prior_joint.fill_(bool(enabled and joint))

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
        boxes = [self.crop_box(m) for m in organ_masks]
        self.num_patches += len(boxes)
        self.num_empty_organ_patches += sum(not bool(m.any()) for m in organ_masks)
        self.num_truncated_organ_patches += sum(_touches_border(m) for m in organ_masks)
        tumour_logit, location_map, focus_maps, cropped = self.tumour_stage(x, organ_log_prob[:, 1:].exp(), boxes)
        if self.training and torch.is_grad_enabled():
            tumour_logit = tumour_logit + self._unused_parameters_anchor(bool(cropped))
        self.auxiliary = CascadeAuxiliary(organ_logits, boxes, cropped, self.stage2_patch_size, location_map,
                                          focus_maps) if self.record_auxiliary else None
        return self.combine(organ_log_prob, tumour_logit)

    # ------------------------------------------------------------------ prediction: the whole case
    def predict_case_logits(self, data: torch.Tensor, context: CaseContext) -> torch.Tensor:
        """The whole preprocessed case (C, Z, Y, X) -> (3, Z, Y, X) log-probabilities: one stage-1 pass over the case
        (sliding window with nnU-Net's tiles, steps, Gaussian and mirroring), the organ box on the whole case (2d
        configuration: per slice), stage 2 on each crop. Logs one line per case and appends a JSON record to
        ``cascade_prediction_log.jsonl`` in the output folder."""
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
        self._log_case(context, found, crop_boxes, ran, int((logits.argmax(0) == 2).sum()), data.shape[1:])
        return logits

    def _log_case(self, context: CaseContext, found, crop_boxes: Dict, ran: bool, tumour_voxels: int,
                  shape) -> None:
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
        self.last_case_record = record
        log = context.log or print
        if not found.found:
            log(f"WARNING: Cascade: {context.case_name}: stage 1 found no organ; "
                + ("tumour label left empty (tumour stage not run)" if not ran else
                   "fallback 'whole_image': tumour stage ran on the whole image"))
        else:
            where = f" on {len(found.boxes)} slices" if crop_ndim == 2 else ""
            log(f"Cascade: {context.case_name}: stage 1 found the organ{where}; organ box "
                f"{format_box(found.union, spacing)}; crop box (K = {self.crop_margin} voxels) "
                f"{format_box(crop_union)}; tumour stage ran, {tumour_voxels} tumour voxels")
        write_case_record(context.output_folder, PREDICTION_LOG, record)


def _touches_border(mask: torch.Tensor) -> bool:
    """Whether a non-empty mask (*S) has a voxel on the border of its array (its box may be cut by the patch)."""
    if not bool(mask.any()):
        return False
    for axis in range(mask.ndim):
        if bool(mask.select(axis, 0).any()) or bool(mask.select(axis, mask.shape[axis] - 1).any()):
            return True
    return False
