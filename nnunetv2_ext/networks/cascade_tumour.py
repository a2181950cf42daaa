"""Network modules of the cascade tumour variant (Qiu et al., "A deep learning-based cascade algorithm for pancreatic
tumor segmentation", Front. Oncol. 2024), dimension-agnostic (2d and 3d).

All modules take the convolution class of nnU-Net's plans (``nn.Conv2d`` / ``nn.Conv3d``, see
``dynamic_network_architectures.building_blocks.helper.convert_dim_to_conv_op``) and, where they normalise, the
plans' norm and non-linearity, so they follow whatever the plans chose. Tensors are ``(B, C, *spatial)``.

- :class:`SalientChangeModule`: stage 1's organ probability -> multiplicative prior on the stage-2 input.
- :class:`ChannelAttention`, :class:`SpatialAttention` (Eq. 5-8) and :class:`LocalisationModule`: non-local
  localisation on the deepest stage-2 features, giving the first tumour map.
- :class:`ContextExplorationBlock` and :class:`FocusModule` (Eq. 9): distraction mining on each decoder level.
- :class:`TumourStageNet`: stage 2 = the plans' encoder + localisation module + one focusing module per decoder level.
- :class:`CascadeTumorNet`: stage 1 (the plans' U-Net, organ) + crop to the organ box + stage 2 (tumour) + paste back,
  returning ordinary 3-class logits (background, organ, tumour) so nnU-Net's predictor works unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.helper import get_matching_convtransp
from torch import nn

from nnunetv2_ext.two_stage.crop import (Box, bounding_box, crop_with_padding, expand_box, paste_crop, resize_to,
                                         whole_box)
from nnunetv2_ext.two_stage.prior import SalientChangeModule

EMPTY_ORGAN_FALLBACKS = ("no_tumour", "whole_patch")


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


class TumourStageNet(nn.Module):
    """Stage 2: the plans' encoder, the localisation module on its deepest features and one focusing module per
    decoder level, deepest to finest.

    Args:
        encoder: a ``PlainConvEncoder`` / ``ResidualEncoder`` of dynamic_network_architectures (as built from the
            plans; ``return_skips`` is switched on here).
        map_kernel_size: kernel of the prediction convolutions (7 in the paper).
    forward: ``(B, C_in, *S)`` with ``S`` divisible by :attr:`total_stride` -> (localisation map at the deepest
    resolution, [focus maps from the coarsest decoder level to the finest]); each map is (B, 1, *level size) logits.
    """

    def __init__(self, encoder: nn.Module, map_kernel_size: int = 7):
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

    ``boxes[b]`` is the crop box of sample b (None: stage 2 skipped, no organ); ``location_maps[b]`` and
    ``focus_maps[b]`` are stage 2's outputs on that crop (None when skipped)."""
    organ_logits: torch.Tensor
    boxes: List[Optional[Box]]
    location_maps: List[Optional[torch.Tensor]]
    focus_maps: List[Optional[List[torch.Tensor]]]


class CascadeTumorNet(nn.Module):
    """Organ stage, then tumour stage in the organ box, in one module.

    forward(x): stage 1 gives organ logits (B, 2, *S) on the whole patch; per sample, the organ box (from the
    reference organ mask set by :meth:`set_reference_organ`, else from stage 1's argmax) grown by ``crop_margin``
    voxels and to a multiple of stage 2's total stride is cropped from the input (zero padding where it leaves the
    patch); with the prior on, the input crop is multiplied by the :class:`SalientChangeModule` of stage 1's organ
    probability; stage 2 predicts the tumour logit on the crop, which is pasted back into the patch (``-fill_logit``
    outside the box). Returns log-probabilities of (background, organ, tumour) = ((1-t)(1-o), (1-t)o, t) with
    ``o`` stage 1's organ probability and ``t`` stage 2's tumour probability: ordinary 3-class logits for nnU-Net's
    softmax/argmax, with the tumour drawn wherever stage 2 says so inside the organ box.

    Samples without any organ voxel: ``empty_organ_fallback='no_tumour'`` (default) skips stage 2 for them (a
    sliding-window tile away from the organ holds no tumour), ``'whole_patch'`` runs stage 2 on the whole patch.
    Counted in :attr:`num_empty_organ_patches` / :attr:`num_patches`.

    Args:
        stage1: network (B, C_in, *S) -> (B, 2, *S) organ logits (the plans' U-Net without deep supervision).
        stage2: :class:`TumourStageNet`.
        salient_change: :class:`SalientChangeModule`.
        crop_margin: K, voxels added on each side of the organ box (int or one per spatial axis).
        min_crop_size: smallest crop per axis (default: twice stage 2's total stride).
    """

    def __init__(self, stage1: nn.Module, stage2: TumourStageNet, salient_change: SalientChangeModule,
                 crop_margin=8, min_crop_size: Optional[Sequence[int]] = None,
                 empty_organ_fallback: str = "no_tumour", fill_logit: float = 20.0):
        super().__init__()
        if empty_organ_fallback not in EMPTY_ORGAN_FALLBACKS:
            raise ValueError(f"empty_organ_fallback must be one of {EMPTY_ORGAN_FALLBACKS}, got "
                             f"{empty_organ_fallback!r}")
        self.stage1 = stage1
        self.stage2 = stage2
        self.salient_change = salient_change
        self.crop_margin = crop_margin
        self.min_crop_size = list(min_crop_size) if min_crop_size is not None else \
            [2 * s for s in stage2.total_stride]
        self.empty_organ_fallback = empty_organ_fallback
        self.fill_logit = fill_logit
        # saved with the weights, so that inference uses the prior exactly as the last training step did
        self.register_buffer("prior_enabled", torch.tensor(True))
        self._reference_organ: Optional[torch.Tensor] = None
        self.record_auxiliary = False
        self.auxiliary: Optional[CascadeAuxiliary] = None
        self.num_patches = 0
        self.num_empty_organ_patches = 0

    def set_prior_enabled(self, enabled: bool) -> None:
        self.prior_enabled.fill_(bool(enabled))

    def set_reference_organ(self, organ_mask: Optional[torch.Tensor]) -> None:
        """Reference organ mask (B, *S) (bool) for the crop boxes of the next forward calls (steps S and I); None:
        boxes from stage 1's own prediction (step J and inference)."""
        self._reference_organ = organ_mask

    def reset_counters(self) -> None:
        self.num_patches = 0
        self.num_empty_organ_patches = 0

    def crop_box(self, organ_mask: torch.Tensor) -> Optional[Box]:
        """Crop box of one sample's organ mask (*S), or None if stage 2 is to be skipped."""
        spatial = organ_mask.shape
        box = bounding_box(organ_mask)
        if box is None:
            if self.empty_organ_fallback == "no_tumour":
                return None
            box = whole_box(spatial)
            return expand_box(box, 0, self.stage2.total_stride, self.min_crop_size)
        return expand_box(box, self.crop_margin, self.stage2.total_stride, self.min_crop_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = x.shape[2:]
        organ_logits = self.stage1(x)
        if isinstance(organ_logits, (list, tuple)):  # deep supervision left on by a caller
            organ_logits = organ_logits[0]
        organ_log_prob = torch.log_softmax(organ_logits.float(), dim=1)
        if self._reference_organ is not None:
            organ_masks = self._reference_organ.to(x.device).bool()
            if tuple(organ_masks.shape) != (x.shape[0], *spatial):
                raise ValueError(f"reference organ mask has shape {tuple(organ_masks.shape)}, expected "
                                 f"{(x.shape[0], *spatial)}")
        else:
            organ_masks = organ_logits.detach().argmax(1) == 1
        use_prior = bool(self.prior_enabled)
        organ_probability = organ_log_prob[:, 1:].exp()

        boxes, location_maps, focus_maps, tumour_logits = [], [], [], []
        for b in range(x.shape[0]):
            box = self.crop_box(organ_masks[b])
            self.num_patches += 1
            self.num_empty_organ_patches += int(not bool(organ_masks[b].any()))
            boxes.append(box)
            if box is None:
                location_maps.append(None)
                focus_maps.append(None)
                tumour_logits.append(organ_logits.new_full((1, 1, *spatial), -self.fill_logit, dtype=torch.float32))
                continue
            image = crop_with_padding(x[b:b + 1], box, 0.0)
            if use_prior:
                image = self.salient_change(image, crop_with_padding(organ_probability[b:b + 1], box, 0.0)
                                            .to(image.dtype))
            location_map, maps = self.stage2(image)
            location_maps.append(location_map)
            focus_maps.append(maps)
            final = resize_to(maps[-1], image.shape[2:]).float()
            tumour_logits.append(paste_crop(final, box, spatial, -self.fill_logit))
        tumour_logit = torch.cat(tumour_logits, dim=0)

        not_tumour = F.logsigmoid(-tumour_logit)
        logits = torch.cat([not_tumour + organ_log_prob[:, :1], not_tumour + organ_log_prob[:, 1:],
                            F.logsigmoid(tumour_logit)], dim=1)
        self.auxiliary = CascadeAuxiliary(organ_logits, boxes, location_maps, focus_maps) \
            if self.record_auxiliary else None
        return logits
