"""Stage-1 map -> prior on the stage-2 input (shared by the cascade tumour variant and the coarse-to-fine scheme).

Both methods turn the first stage's probability map ``p`` into a voxel-wise weight that is multiplied into the image
the second stage sees, and keep the product differentiable in ``p`` so that the second stage's loss trains the first
stage (joint optimisation):

- cascade (Qiu et al. 2024, the *salient change module*): ``x2 = x * (1 + tanh(h(p)))``;
- coarse-to-fine (Liu et al., saliency transformation of RSTN, Yu et al. 2018, Eq. 9 there): ``I = F_S(p)``, the fine
  stage's input is the crop of ``x * I`` concatenated with the crop of ``x``.

:func:`saliency_weighted` is the combination step (multiply, optionally concatenate the original image);
:class:`SalientChangeModule` is the learned transform of the cascade, usable with either combination.

Shapes: image ``x`` (B, C, *S), map ``p`` (B, 1, *S) in [0, 1], weight (B, C, *S) or (B, 1, *S); 2d or 3d.
"""
from __future__ import annotations

import torch
from torch import nn


def saliency_weighted(image: torch.Tensor, weight: torch.Tensor, concat_image: bool = False) -> torch.Tensor:
    """``image * weight`` (weight broadcast over channels when it has one), with ``concat_image`` the original image
    appended along the channels: (B, C, *S) -> (B, C, *S) or (B, 2C, *S)."""
    if weight.shape[0] != image.shape[0] or weight.shape[2:] != image.shape[2:] or weight.shape[1] not in (
            1, image.shape[1]):
        raise ValueError(f"prior weight of shape {tuple(weight.shape)} does not fit the image {tuple(image.shape)}")
    weighted = image * weight
    return torch.cat([weighted, image], dim=1) if concat_image else weighted


class SalientChangeModule(nn.Module):
    """Prior for stage 2 from stage 1's organ probability map ``p`` (the cascade paper's salient change module, in the
    spirit of RSTN's saliency transformation): weight ``w = 1 + tanh(h(p))`` with ``h`` two small convolutions, then
    :func:`saliency_weighted`. The last convolution starts at zero, so the module starts as the identity (prior
    neutral) and learns how much to enhance / suppress (``w`` in (0, 2)); it is differentiable in ``p``, so stage 2's
    loss trains stage 1 (joint optimisation, cascade steps I and J).

    Args:
        conv_op: nn.Conv2d or nn.Conv3d.
        image_channels: channels of ``x`` (the network input).
        hidden_channels, kernel_size: size of ``h``.
        concat_image: append the original image to the weighted one (coarse-to-fine's Eq. 9 form);
            :attr:`out_channels` tells the second stage its input width.
        map_channels: channels of ``p`` (default 1, a stage-1 probability map; the MLN's guidance module feeds its
            region and boundary saliency maps, :mod:`nnunetv2_ext.coarse_to_fine.mln`).
    Shapes: ``x`` (B, image_channels, *S), ``p`` (B, map_channels, *S) in [0, 1] -> (B, out_channels, *S).
    """

    def __init__(self, conv_op, image_channels: int, hidden_channels: int = 8, kernel_size: int = 3,
                 concat_image: bool = False, map_channels: int = 1):
        super().__init__()
        pad = kernel_size // 2
        self.transform = nn.Sequential(conv_op(map_channels, hidden_channels, kernel_size, padding=pad),
                                       nn.LeakyReLU(0.01, inplace=True),
                                       conv_op(hidden_channels, image_channels, kernel_size, padding=pad))
        nn.init.zeros_(self.transform[-1].weight)
        nn.init.zeros_(self.transform[-1].bias)
        self.concat_image = concat_image
        self.out_channels = image_channels * (2 if concat_image else 1)

    def weight(self, probability: torch.Tensor) -> torch.Tensor:
        """``1 + tanh(h(p))``, (B, image_channels, *S)."""
        return 1 + torch.tanh(self.transform(probability))

    def forward(self, x: torch.Tensor, probability: torch.Tensor) -> torch.Tensor:
        return saliency_weighted(x, self.weight(probability), self.concat_image)
