"""The propagation network (Pham et al. §2.2, an STCN-style space-time memory network), 2D, one binary mask.

STCN (Cheng et al. 2021; ``hkchengrex/STCN``, ``model/network.py``) uses ImageNet ResNets as key and value encoders;
no pretrained weights can be downloaded here, and CT slices are not photographs, so both encoders are small
plain-convolution encoders built from dynamic-network-architectures' ``ConvDropoutNormReLU`` (instance norm, leaky
ReLU, as nnU-Net), trained from scratch. The structure is STCN's:

- key encoder (image only) -> key projection (``key_dim`` channels at stride 8; the same keys for query and memory,
  STCN's shared key space) and a compressed query feature ``q_v``;
- value encoder (image + mask) fused with the key encoder's deepest features -> ``value_dim`` channels;
- memory read (:mod:`~nnunetv2_ext.propagation.memory`) -> readout, concatenated with ``q_v``;
- decoder: up by transposed convolutions through the key encoder's stride-4/2/1 features -> one logit per pixel.

Shapes: frames (N, C, H, W) with H and W divisible by :attr:`PropagationNet.total_stride` (8); masks (N, 1, H, W) in
[0, 1]; memory keys (N, Ck, T, H/8, W/8), values (N, Cv, T, H/8, W/8); logits (N, 1, H, W). No I/O.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
from dynamic_network_architectures.building_blocks.simple_conv_blocks import ConvDropoutNormReLU
from torch import nn

from nnunetv2_ext.propagation.memory import l2_affinity, readout


def _block(in_channels: int, out_channels: int, stride: int = 1, kernel: int = 3) -> nn.Module:
    return ConvDropoutNormReLU(nn.Conv2d, in_channels, out_channels, kernel, stride, True, nn.InstanceNorm2d,
                               {"eps": 1e-5, "affine": True}, None, None, nn.LeakyReLU, {"inplace": True})


class PlainEncoder(nn.Module):
    """Four stages (strides 1, 2, 4, 8), two conv blocks each; widths ``width * 2^s``.
    forward: (N, C, H, W) -> [features at stride 1, 2, 4, 8]."""

    def __init__(self, in_channels: int, width: int):
        super().__init__()
        widths = [width * 2 ** s for s in range(4)]
        stages, previous = [], in_channels
        for s, w in enumerate(widths):
            stages.append(nn.Sequential(_block(previous, w, 1 if s == 0 else 2), _block(w, w)))
            previous = w
        self.stages = nn.ModuleList(stages)
        self.widths = widths

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out


class PropagationNet(nn.Module):
    """STCN-style propagation of one binary mask (module docstring).

    Args:
        in_channels: image channels of the dataset.
        width: features of the first encoder stage (stage s: ``width * 2^s``).
        key_dim, value_dim: channels of the keys and of the values.
    """
    total_stride = 8

    def __init__(self, in_channels: int = 1, width: int = 16, key_dim: int = 32, value_dim: int = 64):
        super().__init__()
        self.in_channels, self.width, self.key_dim, self.value_dim = in_channels, width, key_dim, value_dim
        self.key_encoder = PlainEncoder(in_channels, width)
        deep = self.key_encoder.widths[-1]
        self.key_projection = nn.Conv2d(deep, key_dim, 1)
        self.key_compression = _block(deep, value_dim)
        self.value_encoder = PlainEncoder(in_channels + 1, width)
        self.value_fusion = nn.Sequential(_block(2 * deep, value_dim), _block(value_dim, value_dim))
        self.compress = _block(2 * value_dim, deep)
        skips = self.key_encoder.widths[:-1][::-1]           # stride 4, 2, 1
        ups, fuse, previous = [], [], deep
        for c in skips:
            ups.append(nn.ConvTranspose2d(previous, c, 2, 2))
            fuse.append(_block(2 * c, c))
            previous = c
        self.up, self.fuse = nn.ModuleList(ups), nn.ModuleList(fuse)
        self.prediction = nn.Conv2d(previous, 1, 1)

    def config(self) -> dict:
        return {"in_channels": self.in_channels, "width": self.width, "key_dim": self.key_dim,
                "value_dim": self.value_dim}

    def encode_key(self, frames: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, List[torch.Tensor]]:
        """frames (N, C, H, W) -> key (N, Ck, h, w), query value features (N, Cv, h, w), encoder features
        [stride 1, 2, 4, 8]."""
        features = self.key_encoder(frames)
        return self.key_projection(features[-1]), self.key_compression(features[-1]), features

    def encode_value(self, frames: torch.Tensor, key_features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """frames (N, C, H, W), the key encoder's deepest features (N, 8w, h, w), masks (N, 1, H, W) -> values
        (N, Cv, h, w)."""
        deep = self.value_encoder(torch.cat([frames, masks.to(frames.dtype)], 1))[-1]
        return self.value_fusion(torch.cat([deep, key_features], 1))

    def segment(self, key: torch.Tensor, query_value: torch.Tensor, features: List[torch.Tensor],
                memory_keys: torch.Tensor, memory_values: torch.Tensor) -> torch.Tensor:
        """One query frame against the memory -> logits (N, 1, H, W)."""
        read = readout(l2_affinity(memory_keys, key), memory_values)
        x = self.compress(torch.cat([read, query_value], 1))
        for up, fuse, skip in zip(self.up, self.fuse, features[:-1][::-1]):
            x = fuse(torch.cat([up(x), skip], 1))
        return self.prediction(x)

    def forward(self, frames: torch.Tensor, first_mask: torch.Tensor) -> torch.Tensor:
        """Training clip (STCN's): frames (B, T, C, H, W), the first frame's mask (B, 1, H, W) -> logits of frames
        1..T-1 (B, T-1, 1, H, W); each predicted frame (its probability) joins the memory for the next."""
        b, t = frames.shape[:2]
        key0, _, features0 = self.encode_key(frames[:, 0])
        memory_keys = [key0]
        memory_values = [self.encode_value(frames[:, 0], features0[-1], first_mask)]
        out = []
        for i in range(1, t):
            key, query_value, features = self.encode_key(frames[:, i])
            logits = self.segment(key, query_value, features, torch.stack(memory_keys, 2),
                                  torch.stack(memory_values, 2))
            out.append(logits)
            if i + 1 < t:
                memory_keys.append(key)
                memory_values.append(self.encode_value(frames[:, i], features[-1], torch.sigmoid(logits)))
        return torch.stack(out, 1)
