"""Multi-level structural network (MLN): the fine stage's head of Liu, Duan, Zeng (2021), "Learning multi-level
structural information for small organ segmentation" - the network half of the paper whose loss is
:class:`nnunetv2_ext.losses.MultiLevelStructuralLoss`.

The fine stage is the plans' U-Net (encoder + decoder built by nnU-Net from the plans, dynamic-network-architectures
blocks); its last decoder features ``F`` (C0 channels, full resolution of the crop) feed three branches and the
multi-level saliency guidance module:

- region branch: ASPP -> 1x1 conv -> region logits ``R`` (K classes); trained by E_R (Dice + CE);
- boundary branch: ASPP -> 1x1 conv -> ``tanh`` -> signed distance maps ``D`` (K-1 foreground classes, normalised
  to (-1, 1), negative inside); trained by E_B (:class:`MLNBoundaryTerm`: L1 regression to the reference SDM plus our
  boundary loss, Eq. 7, on the region the predicted SDM encloses);
- multi-level saliency guidance (Eq. 12, our reading, see trainers_docs/nnUNetTrainerCoarseToFine.md): the region
  saliency ``softmax(R)[1:]`` and the boundary saliency ``1 - |D|`` (1 on the predicted boundary, -> 0 away from it)
  are turned into a channel-wise weight ``G = 1 + tanh(h(s_R, s_B))`` on the features (the same learned transform as
  the saliency transformation F_S between the stages, :class:`~nnunetv2_ext.two_stage.prior.SalientChangeModule`,
  starting as the identity); a 1x1 conv on ``F * G`` gives the fused logits ``Y``;
- pixel branch: N points where ``Y`` is least certain (the selection of
  :class:`~nnunetv2_ext.losses.UncertainPointLoss`: k·N uniform candidates, the m·N with the smallest margin between
  the two largest class probabilities, plus (1-m)·N uniform points; at inference the N most uncertain voxels, as
  PointRend), snapped to voxel centres; a small transformer encoder (torch ``nn.TransformerEncoder``) over the point
  tokens (features ``F`` and logits ``Y`` at the point, plus an embedding of its position) predicts a correction of
  ``Y`` at the points, which is written into ``Y`` (the final logits); trained by E_P (CE at the points).

Shapes: input (B, C_in, *S) with S divisible by the encoder's total stride, 2d or 3d; output :class:`MLNOutput`.
Every width the paper leaves open (ASPP width and rates, transformer size, N) is a constructor argument; the
defaults and why are on the trainer page.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from nnunetv2_ext.losses import BoundaryLoss, UncertainPointLoss
from nnunetv2_ext.losses.uncertain_points import uncertainty_from_logits
from nnunetv2_ext.two_stage.ops import PlansOps
from nnunetv2_ext.two_stage.prior import SalientChangeModule


def unet_decoder_features(encoder: nn.Module, decoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The last decoder stage's features of a dynamic-network-architectures U-Net (``UNetDecoder.forward`` without
    its segmentation layers): (B, C_in, *S) -> (B, decoder.stages[-1] output channels, *S)."""
    skips = encoder(x)
    lres = skips[-1]
    for s in range(len(decoder.stages)):
        lres = decoder.stages[s](torch.cat((decoder.transpconvs[s](lres), skips[-(s + 2)]), 1))
    return lres


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLab v3, Chen et al. 2017) with the plans' conv / norm / non-linearity:
    a 1x1 branch, one 3x3 branch per dilation rate and an image-pooling branch (global mean -> 1x1 conv ->
    non-linearity, no norm: one value per channel), concatenated and projected by a 1x1 block.
    Shapes: (B, in_channels, *S) -> (B, out_channels, *S)."""

    def __init__(self, ops: PlansOps, in_channels: int, out_channels: int, rates: Sequence[int] = (2, 4, 6)):
        super().__init__()
        if not rates or any(int(r) < 1 for r in rates):
            raise ValueError(f"ASPP: dilation rates must be integers >= 1, got {tuple(rates)}")
        self.branches = nn.ModuleList([ops.block(in_channels, out_channels, 1)] +
                                      [ops.block(in_channels, out_channels, 3, dilation=int(r)) for r in rates])
        pool = [ops.conv_op(in_channels, out_channels, 1)]
        if ops.nonlin is not None:
            pool.append(ops.nonlin(**ops.nonlin_kwargs))
        self.pool = nn.Sequential(*pool)
        self.project = ops.block(out_channels * (len(rates) + 2), out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(x.mean(dim=tuple(range(2, x.ndim)), keepdim=True)).expand(-1, -1, *x.shape[2:])
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))


class PointTransformer(nn.Module):
    """Pixel branch: a small transformer encoder over point tokens.

    token_i = W_in [F(p_i); Y(p_i)] + W_pos p_i, then ``layers`` pre-norm transformer layers (``heads`` heads, width
    ``d_model``, feed-forward ``2 d_model``, no dropout), then a linear map to K corrections added to Y(p_i). The last
    linear map starts at zero, so the branch starts by returning Y unchanged.
    Shapes: features (B, C, N), logits (B, K, N), coordinates (B, N, D) in [0, 1] -> (B, K, N).
    """

    def __init__(self, feature_channels: int, num_classes: int, dims: int, d_model: int = 64, heads: int = 4,
                 layers: int = 2):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"PointTransformer: d_model ({d_model}) must be divisible by heads ({heads})")
        self.embed = nn.Linear(feature_channels + num_classes, d_model)
        self.position = nn.Linear(dims, d_model)
        layer = nn.TransformerEncoderLayer(d_model, heads, 2 * d_model, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.correct = nn.Linear(d_model, num_classes)
        nn.init.zeros_(self.correct.weight)
        nn.init.zeros_(self.correct.bias)

    def forward(self, features: torch.Tensor, logits: torch.Tensor, coordinates: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(torch.cat([features, logits], 1).transpose(1, 2)) + \
            self.position(coordinates.to(features.dtype))
        return logits + self.correct(self.encoder(tokens)).transpose(1, 2)


@dataclass
class MLNOutput:
    """What the MLN fine stage returns for a batch of crops.

    ``logits`` (B, K, *S): final logits (fused + pixel branch at the points); ``region`` (B, K, *S): region branch;
    ``sdm`` (B, K-1, *S): boundary branch, normalised signed distance in (-1, 1); ``point_logits`` (B, K, N) and
    ``point_index`` (B, N): the pixel branch's logits and the flat voxel index of each point."""
    logits: torch.Tensor
    region: Optional[torch.Tensor] = None
    sdm: Optional[torch.Tensor] = None
    point_logits: Optional[torch.Tensor] = None
    point_index: Optional[torch.Tensor] = None


def flat_index_to_coordinates(index: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
    """Flat voxel indices (B, N) -> voxel-centre coordinates (B, N, D) in [0, 1] (the convention of
    :func:`nnunetv2_ext.losses.point_sample`)."""
    coords, rest = [], index
    for size in reversed(spatial):
        coords.append(rest % size)
        rest = torch.div(rest, size, rounding_mode="floor")
    coords = torch.stack(coords[::-1], dim=-1).to(torch.float32)
    return (coords + 0.5) / torch.tensor(list(spatial), dtype=torch.float32, device=index.device)


def coordinates_to_flat_index(points: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
    """Continuous coordinates (B, N, D) in [0, 1] -> flat index (B, N) of the voxel containing each point."""
    index = torch.zeros(points.shape[:2], dtype=torch.long, device=points.device)
    for d, size in enumerate(spatial):
        i = (points[..., d] * size).floor().long().clamp_(0, size - 1)
        index = index * size + i
    return index


class MLNHead(nn.Module):
    """Region / boundary / pixel branches and the multi-level saliency guidance module on decoder features.

    Args:
        ops: the plans' ops (conv, norm, non-linearity).
        in_channels: C0, channels of the decoder features.
        num_classes: K (background included).
        branch_channels: width of each ASPP (default: C0).
        aspp_rates: dilation rates of the 3x3 ASPP branches.
        num_points: N points per sample for the pixel branch (capped at the number of voxels).
        oversample_ratio, importance_ratio: k and m of the training-time point selection (PointRend; paper 3, 0.75).
        d_model, heads, layers: size of the point transformer.
    """

    def __init__(self, ops: PlansOps, in_channels: int, num_classes: int, branch_channels: Optional[int] = None,
                 aspp_rates: Sequence[int] = (2, 4, 6), num_points: int = 1024, oversample_ratio: float = 3.0,
                 importance_ratio: float = 0.75, d_model: int = 64, heads: int = 4, layers: int = 2):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"MLNHead needs >= 2 classes (background + foreground), got {num_classes}")
        width = int(branch_channels or in_channels)
        self.num_classes = num_classes
        self.region_aspp = ASPP(ops, in_channels, width, aspp_rates)
        self.region_out = ops.conv_op(width, num_classes, 1)
        self.boundary_aspp = ASPP(ops, in_channels, width, aspp_rates)
        self.boundary_out = ops.conv_op(width, num_classes - 1, 1)
        # Eq. 12 (our reading): saliency of the region and boundary levels -> weight on the features
        self.guidance = SalientChangeModule(ops.conv_op, in_channels, map_channels=2 * (num_classes - 1))
        self.fused_out = ops.conv_op(in_channels, num_classes, 1)
        dims = 3 if ops.conv_op is nn.Conv3d else 2
        self.points = PointTransformer(in_channels, num_classes, dims, d_model, heads, layers)
        # the selection of E_P's points (Eq. 10), reused as is
        self.selector = UncertainPointLoss(num_points, oversample_ratio, importance_ratio)

    def select_points(self, logits: torch.Tensor) -> torch.Tensor:
        """Flat voxel indices (B, N) of the pixel branch's points (no gradient)."""
        spatial = logits.shape[2:]
        total = int(torch.tensor(spatial).prod())
        n = min(self.selector.num_points, total)
        with torch.no_grad():
            if self.training:
                index = coordinates_to_flat_index(self.selector.select_points(logits), spatial)[:, :n]
            else:  # inference: the N most uncertain voxels (PointRend)
                uncertainty = uncertainty_from_logits(logits.detach().float().flatten(2))
                index = uncertainty.topk(n, dim=1).indices
        return index

    def forward(self, features: torch.Tensor) -> MLNOutput:
        region = self.region_out(self.region_aspp(features))
        sdm = torch.tanh(self.boundary_out(self.boundary_aspp(features)))
        saliency = torch.cat([torch.softmax(region.float(), 1)[:, 1:].to(sdm.dtype), 1 - sdm.abs()], 1)
        fused = self.fused_out(features * self.guidance.weight(saliency))

        index = self.select_points(fused)
        flat_features = features.flatten(2)
        flat_fused = fused.flatten(2)
        point_features = flat_features.gather(2, index[:, None].expand(-1, flat_features.shape[1], -1))
        point_fused = flat_fused.gather(2, index[:, None].expand(-1, flat_fused.shape[1], -1))
        coordinates = flat_index_to_coordinates(index, features.shape[2:])
        point_logits = self.points(point_features, point_fused, coordinates)
        logits = flat_fused.scatter(2, index[:, None].expand(-1, flat_fused.shape[1], -1),
                                    point_logits.to(flat_fused.dtype)).view_as(fused)
        return MLNOutput(logits, region, sdm, point_logits, index)


class MLNFineNet(nn.Module):
    """Fine stage with the MLN head: the plans' encoder and decoder (segmentation layers unused) + :class:`MLNHead`.

    Args:
        unet: a dynamic-network-architectures U-Net built from the plans (``PlainConvUNet`` / ``ResidualEncoderUNet``)
            with the fine stage's input channels; its ``encoder`` and ``decoder`` are kept.
        num_classes: K.
        **head_kwargs: see :class:`MLNHead`.
    """

    def __init__(self, unet: nn.Module, num_classes: int, **head_kwargs):
        super().__init__()
        if not (hasattr(unet, "encoder") and hasattr(unet, "decoder") and hasattr(unet.decoder, "stages")):
            raise ValueError(f"MLNFineNet needs a dynamic-network-architectures U-Net (encoder + UNetDecoder), got "
                             f"{type(unet).__name__}")
        unet.encoder.return_skips = True
        self.encoder, self.decoder = unet.encoder, unet.decoder
        ops = PlansOps.from_encoder(unet.encoder)
        channels = unet.decoder.seg_layers[-1].in_channels
        self.head = MLNHead(ops, channels, num_classes, **head_kwargs)

    def forward(self, x: torch.Tensor) -> MLNOutput:
        return self.head(unet_decoder_features(self.encoder, self.decoder, x))


class MLNBoundaryTerm(nn.Module):
    """E_B of the boundary branch: ``mean |D - tanh(phi / scale)| + L_B(sigmoid(-sharpness * D), phi)``.

    ``phi`` is the reference signed distance map in mm (negative inside, Eq. 6;
    :mod:`nnunetv2_ext.transforms.signed_distance`), ``scale`` (mm) sets how far from the boundary the normalised
    regression target saturates, and the second term is our boundary loss (Eq. 7, :class:`BoundaryLoss`) applied to
    the region the predicted SDM encloses. Voxels with the ignore label do not count.

    Shapes: sdm_pred (B, K-1, *S) in (-1, 1), target (B, 1, *S) label map, sdm (B, K-1, *S) mm -> scalar.
    """

    def __init__(self, scale_mm: float, sharpness: float = 10.0, ignore_label: Optional[int] = None):
        super().__init__()
        if not scale_mm > 0 or not sharpness > 0:
            raise ValueError(f"MLNBoundaryTerm: scale_mm and sharpness must be > 0, got {scale_mm}, {sharpness}")
        self.scale_mm, self.sharpness, self.ignore_label = float(scale_mm), float(sharpness), ignore_label
        self.boundary = BoundaryLoss(ignore_label)

    def forward(self, sdm_pred: torch.Tensor, target: torch.Tensor, sdm: torch.Tensor) -> torch.Tensor:
        if sdm_pred.shape != sdm.shape:
            raise ValueError(f"MLNBoundaryTerm: predicted SDM {tuple(sdm_pred.shape)} and reference SDM "
                             f"{tuple(sdm.shape)} differ")
        pred = sdm_pred.float()
        error = (pred - torch.tanh(sdm.float() / self.scale_mm)).abs()
        if self.ignore_label is not None:
            valid = (target != self.ignore_label).float()
            regression = (error * valid).sum() / (valid.sum() * error.shape[1]).clamp_min(1.0)
        else:
            regression = error.mean()
        # the region the predicted SDM encloses as softmax logits (0, -s D): for one organ sigmoid(-s D)
        logits = torch.cat([torch.zeros_like(pred[:, :1]), -self.sharpness * pred], 1)
        return regression + self.boundary(logits, target, sdm)


def split_points(output: MLNOutput, target: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(point logits (B, K, N), reference label at each point (B, N)) for E_P."""
    labels = target.flatten(2)[:, 0].gather(1, output.point_index)
    return output.point_logits, labels.long()
