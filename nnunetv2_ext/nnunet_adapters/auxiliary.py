"""How a two-stage network's extra outputs reach its loss under nnU-Net's ``loss(output, target)`` call.

nnU-Net's ``train_step`` / ``validation_step`` call ``self.network(data)`` and then ``self.loss(output, target)`` with
the network's (B, C, *S) logits only, and its online evaluation expects exactly that tensor. The cascade's and the
coarse-to-fine loss also need what the network computed on the way (stage-1 logits, crop boxes, stage-2 maps). The
one convention, used by both: the network records them per forward as ``network.auxiliary`` while its
``record_auxiliary`` is on (its trainer switches it on for training and off for whole-case prediction), and the
trainer's loss is a :class:`LossWithAuxiliary`, which reads them from the unwrapped network right after that forward.
"""
from typing import Callable, Optional

from torch import nn

from nnunetv2_ext.nnunet_adapters.network import unwrap_network


class LossWithAuxiliary:
    """``loss(output, network.auxiliary, target, **extras())`` for nnU-Net's ``loss(output, target)``.

    Args:
        loss: the method's loss module, called as ``loss(output, auxiliary, target, **extras)``.
        network: returns the network of this step (the trainer's ``self.network``, possibly wrapped).
        extras: returns further keyword arguments of the step (e.g. the coarse-to-fine's signed distance maps).
    """

    def __init__(self, loss: nn.Module, network: Callable[[], nn.Module],
                 extras: Optional[Callable[[], dict]] = None):
        self.loss, self.network, self.extras = loss, network, extras

    def __call__(self, output, target):
        net = unwrap_network(self.network())
        if getattr(net, "auxiliary", None) is None:
            raise RuntimeError(f"{type(net).__name__} recorded no auxiliary outputs in this forward; its loss needs them "
                               f"(record_auxiliary must be on while training)")
        return self.loss(output, net.auxiliary, target, **(self.extras() if self.extras else {}))
