"""The network a trainer or nnU-Net's predictor holds, without its wrappers.

nnU-Net wraps the network in ``DistributedDataParallel`` (``.module``) under DDP and in ``torch.compile``'s
``OptimizedModule`` (``._orig_mod``) when it compiles; our trainers and the predictor adapter need the module they
built, to set its training step or to call its whole-case prediction. One helper, used everywhere.
"""
from torch import nn


def unwrap_network(network: nn.Module) -> nn.Module:
    """The module under DDP and torch.compile wrappers (in the order nnU-Net applies them: compile, then DDP)."""
    network = getattr(network, "module", network)
    return getattr(network, "_orig_mod", network)
