"""The sampling state next to nnU-Net's checkpoint, written atomically (issue 9, item 9).

nnU-Net builds and writes its checkpoint dict inside ``save_checkpoint``; adding our state to that file would mean
reading and re-writing it (double I/O), and a kill between the two writes would leave a checkpoint without our state.
Instead the state goes into a *sidecar* file, ``checkpoint_latest.pth`` -> ``checkpoint_latest_sampling.pt``, written
to a temporary name and renamed (atomic on POSIX), *before* nnU-Net writes its checkpoint. The sidecar keeps the
state of the newest earlier checkpoint as well, so whichever of the two writes a kill interrupts, the sidecar holds
the state that matches the checkpoint on disk (looked up by the checkpoint's ``current_epoch``).
"""
from __future__ import annotations

import os
from typing import Optional

import torch

FORMAT_KEY = "nnunetv2_ext_sampling_sidecar"


def sidecar_path(checkpoint_file: str) -> str:
    return os.path.splitext(checkpoint_file)[0] + "_sampling.pt"


def _read(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    content = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(content, dict) or content.get(FORMAT_KEY) != 1:
        raise RuntimeError(f"{path} is not a PNSS/HESS sampling state file")
    return content["states"]


def write_state(checkpoint_file: str, checkpoint_epoch: int, state: dict) -> None:
    """Stores ``state`` for the checkpoint whose ``current_epoch`` will be ``checkpoint_epoch``; keeps the newest
    earlier entry."""
    path = sidecar_path(checkpoint_file)
    try:
        earlier = {e: s for e, s in _read(path).items() if e < checkpoint_epoch}
    except Exception:  # an unreadable old sidecar is replaced, never trusted
        earlier = {}
    states = {checkpoint_epoch: state}
    if earlier:
        newest = max(earlier)
        states[newest] = earlier[newest]
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save({FORMAT_KEY: 1, "states": states}, tmp)
    os.replace(tmp, path)


def read_state(checkpoint_file: str, checkpoint_epoch: int) -> Optional[dict]:
    """The state saved for ``checkpoint_epoch``, or None if the sidecar is missing or has no such entry."""
    return _read(sidecar_path(checkpoint_file)).get(checkpoint_epoch)
