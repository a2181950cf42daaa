"""Blocks of the cascade tumour variant (Qiu et al., Front. Oncol. 2024), dimension-agnostic (2d and 3d).

All modules take the convolution class of nnU-Net's plans (``nn.Conv2d`` / ``nn.Conv3d``) and, where they normalise,
the plans' norm and non-linearity (:class:`~nnunetv2_ext.two_stage.ops.PlansOps`), so they follow whatever the plans
chose. Tensors are ``(B, C, *spatial)``.

- :class:`ChannelAttention`, :class:`SpatialAttention` (Eq. 5-8) and :class:`LocalisationModule`: non-local
  localisation on the deepest stage-2 features, giving the first tumour map.
- :class:`ContextExplorationBlock` and :class:`FocusModule` (Eq. 9): distraction mining on each decoder level.
- :class:`DualBranchEncoder` (Eq. 1-4): the plans' encoder plus a multi-scale branch (1x1 -> 3x3 and 5x5 -> 3x3
  paths), fused per level; from dynamic-network-architectures blocks.
- :class:`MultiScaleUNet` (§3.1): stage 1 as the paper's "general multi-scale U-Net" = the dual-branch encoder +
  dynamic-network-architectures' ``UNetDecoder``.
- :class:`TumourStageNet`: stage 2 = encoder (the plans' first ``num_stages`` stages, or the dual-branch one) +
  localisation module + one focusing module per decoder level.
- :func:`transfer_encoder_weights` (the transfer step T): stage 1's encoder weights initialise stage 2's encoder.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from dynamic_network_architectures.building_blocks.helper import get_matching_convtransp
from dynamic_network_architectures.building_blocks.simple_conv_blocks import ConvDropoutNormReLU
from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder
from torch import nn

from nnunetv2_ext.two_stage.crop import resize_to
from nnunetv2_ext.two_stage.ops import PlansOps


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
        self.conv_bias = getattr(encoder, "conv_bias", True)
        self.dropout_op = getattr(encoder, "dropout_op", None)
        self.dropout_op_kwargs = getattr(encoder, "dropout_op_kwargs", None)
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


class MultiScaleUNet(nn.Module):
    """Stage 1 as the paper's "general multi-scale U-Net" (§3.1; the authors' ``stan_part.py``: every down step has
    a ``1x1 -> 3x3`` and a ``5x5 -> 3x3`` path): a :class:`DualBranchEncoder` on the plans' whole encoder and
    dynamic-network-architectures' ``UNetDecoder`` on its fused levels (the plans' decoder convolutions per stage),
    so stage 1 and stage 2's dual-branch encoder are the same blocks and the transfer step T can copy one into the
    other.

    Args:
        encoder: :class:`DualBranchEncoder` on the plans' full encoder.
        num_classes: output channels (2 for the organ stage).
        n_conv_per_stage_decoder: the plans' ``n_conv_per_stage_decoder``.
        deep_supervision: as nnU-Net's U-Nets (False in the cascade).
    forward: (B, C_in, *S) -> (B, num_classes, *S) logits (a list, finest first, with deep supervision).
    """

    def __init__(self, encoder: DualBranchEncoder, num_classes: int, n_conv_per_stage_decoder,
                 deep_supervision: bool = False):
        super().__init__()
        self.encoder = encoder
        self.decoder = UNetDecoder(encoder, num_classes, n_conv_per_stage_decoder, deep_supervision)

    def forward(self, x: torch.Tensor):
        return self.decoder(self.encoder(x))


def transfer_encoder_weights(source: nn.Module, target: nn.Module, check_only: bool = False) -> int:
    """The transfer step T (stage-1 pancreas weights initialise the tumour stage): copies every tensor of
    ``target``'s state (an encoder: the plans' first stages, or a :class:`DualBranchEncoder`) from the tensor of the
    same name in ``source`` (stage 1's encoder of the same kind, possibly deeper). Every target entry must exist in
    ``source`` with the same shape, else ValueError naming the first that does not (nothing is copied then).
    ``check_only``: only that check. Returns the number of tensors copied (or that would be)."""
    src, dst = source.state_dict(), target.state_dict()
    for key, value in dst.items():
        if key not in src:
            raise ValueError(f"transfer T: stage 2's encoder entry {key!r} has no counterpart in stage 1's encoder "
                             f"(the two encoders must be of the same kind: 'plans' with 'plans', 'multi_scale' "
                             f"stage 1 with 'dual_branch' stage 2)")
        if tuple(src[key].shape) != tuple(value.shape):
            raise ValueError(f"transfer T: stage 2's encoder entry {key!r} has shape {tuple(value.shape)}, stage "
                             f"1's {tuple(src[key].shape)}")
    if not check_only:
        with torch.no_grad():
            for key, value in dst.items():
                value.copy_(src[key])
    return len(dst)


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
