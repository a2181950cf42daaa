"""The two CPS networks from the plans, with dynamic-network-architectures (the library nnU-Net builds its own
networks with, so both stay nnU-Net networks: same stages, features, kernels, strides, normalisation).

- Network A: the plans' architecture, exactly as ``nnUNetTrainer.build_network_architecture`` builds it.
- Network B, the *partner*: the other nnU-Net U-Net family on the same stages. Plans with nnU-Net's plain U-Net
  (``PlainConvUNet``, the default planner) get the residual-encoder U-Net (``ResidualEncoderUNet``, blocks per stage
  as nnU-Net's ResEnc planners: 1, 3, 4, 6, 6, ...; one conv per decoder stage as there); ResEnc plans
  (``nnUNetPlannerResEnc*``) get the plain U-Net (2 convs per encoder and decoder stage, nnU-Net's default).

Different architectures perturb the two networks more than different initialisations alone (Chen et al. use the
same architecture twice); Pham et al. pair two designs.
"""
from __future__ import annotations

import inspect
import pydoc
from typing import Sequence, Tuple

from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

PLAIN = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
RESENC = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
#: encoder blocks per stage of nnU-Net's ResEnc planners (residual_encoder_unet_planners.py)
RESENC_BLOCKS_PER_STAGE = (1, 3, 4, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6)
PLAIN_CONVS_PER_STAGE = 2


def _short(name: str) -> str:
    return name.split(".")[-1]


def partner_architecture(arch_class_name: str, arch_kwargs: dict,
                         resenc_blocks: Sequence[int] = RESENC_BLOCKS_PER_STAGE,
                         plain_convs: int = PLAIN_CONVS_PER_STAGE) -> Tuple[str, dict]:
    """(class name, kwargs) of network B for the plans' architecture (module docstring)."""
    n = int(arch_kwargs["n_stages"])
    kwargs = dict(arch_kwargs)
    if _short(arch_class_name) == _short(PLAIN):
        target = RESENC
        blocks = list(resenc_blocks)[:n] + [list(resenc_blocks)[-1]] * max(0, n - len(resenc_blocks))
        kwargs.pop("n_conv_per_stage", None)
        kwargs.update(n_blocks_per_stage=blocks, n_conv_per_stage_decoder=[1] * (n - 1))
    elif _short(arch_class_name) == _short(RESENC):
        target = PLAIN
        for k in ("n_blocks_per_stage", "block", "bottleneck_channels", "stem_channels"):
            kwargs.pop(k, None)
        kwargs.update(n_conv_per_stage=[plain_convs] * n, n_conv_per_stage_decoder=[plain_convs] * (n - 1))
    else:
        raise ValueError(f"CPS pairs nnU-Net's plain U-Net with its residual-encoder U-Net; the plans use "
                         f"{arch_class_name}. Override build_partner_network in a subclass for other architectures")
    accepted = inspect.signature(pydoc.locate(target).__init__).parameters
    return target, {k: v for k, v in kwargs.items() if k in accepted}


def build_pair_members(configuration_manager, num_input_channels: int, num_output_channels: int,
                       deep_supervision: bool, resenc_blocks: Sequence[int] = RESENC_BLOCKS_PER_STAGE,
                       plain_convs: int = PLAIN_CONVS_PER_STAGE):
    """(network A, network B) built from the configuration, both initialised as nnU-Net initialises its networks."""
    name = configuration_manager.network_arch_class_name
    kwargs = configuration_manager.network_arch_init_kwargs
    requires_import = configuration_manager.network_arch_init_kwargs_req_import
    net_a = get_network_from_plans(name, kwargs, requires_import, num_input_channels, num_output_channels,
                                   allow_init=True, deep_supervision=deep_supervision)
    partner, partner_kwargs = partner_architecture(name, kwargs, resenc_blocks, plain_convs)
    net_b = get_network_from_plans(partner, partner_kwargs, [k for k in requires_import if k in partner_kwargs],
                                   num_input_channels, num_output_channels, allow_init=True,
                                   deep_supervision=deep_supervision)
    return net_a, net_b
