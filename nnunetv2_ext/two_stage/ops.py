"""Convolution helpers built from the ops of nnU-Net's plans, shared by the two-stage methods' networks.

:class:`ConvNormAct` is kept besides dynamic-network-architectures' ``ConvDropoutNormReLU`` because the cascade's
context exploration block and the MLN's ASPP need dilated convolutions, which that block does not offer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from torch import nn


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
