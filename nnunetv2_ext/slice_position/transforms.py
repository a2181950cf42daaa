"""Keeping the position channel exact through nnU-Net's data augmentation.

nnU-Net's intensity augmentations (Gaussian noise, brightness, contrast, gamma) act on every input channel; applied
to the position channel they would tell a network a slice lies elsewhere (brightness alone moves p by up to 25 %).
Rotation and scaling keep a constant channel constant except where they pull in zero padding. So the trainers of
:mod:`nnunetv2_ext.trainers.slice_position` wrap nnU-Net's training pipeline in a pair of transforms:
:class:`HoldSlicePosition` takes the channel out before the first augmentation and keeps its value, and
:class:`RestoreSlicePosition` puts it back, constant over the whole patch, after the last one. The value of a patch
is the channel's maximum: positions are > 0 and nnU-Net pads patches that reach past the image with 0.

Shape convention (batchgeneratorsv2): ``image`` is one sample, (C, X, Y) or (C, X, Y, Z), a torch tensor.
"""
from __future__ import annotations

import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform

KEY = "slice_position"


class _PositionChannelTransform(BasicTransform):
    def __init__(self, channel: int):
        super().__init__()
        self.channel = channel


class HoldSlicePosition(_PositionChannelTransform):
    def apply(self, data_dict, **params):
        image, c = data_dict["image"], self.channel
        data_dict[KEY] = image[c].max().item()
        data_dict["image"] = torch.cat([image[:c], image[c + 1:]], dim=0)
        return data_dict


class RestoreSlicePosition(_PositionChannelTransform):
    def apply(self, data_dict, **params):
        image, c = data_dict["image"], self.channel
        constant = torch.full_like(image[:1], data_dict.pop(KEY))
        data_dict["image"] = torch.cat([image[:c], constant, image[c:]], dim=0)
        return data_dict
