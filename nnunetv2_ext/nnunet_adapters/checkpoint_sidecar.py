"""The sampling state next to nnU-Net's checkpoint, written atomically (issue 9, item 9).

nnU-Net builds and writes its checkpoint dict inside ``save_checkpoint``; adding our state to that file would mean
reading and re-writing it (double I/O), and a kill between the two writes would leave a checkpoint without our state.
Instead the state goes into a *sidecar* file, ``checkpoint_latest.pth`` -> ``checkpoint_latest_sampling.pt``, written
to a temporary name and renamed (atomic on POSIX), *before* nnU-Net writes its checkpoint. The sidecar keeps the
state of the newest earlier checkpoint as well, so whichever of the two writes a kill interrupts, the sidecar holds
the state that matches the checkpoint on disk (looked up by the checkpoint's ``current_epoch``).
"""
from __future__ import annotations

import json
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


class SamplingStateMixin:
    """What both sampling trainers do with their state: the atomically written sidecar next to every checkpoint
    (the functions above), its check when training continues, and the sampling trace.

    Subclasses implement :meth:`_sampling_state` (None while there is nothing to save) and call
    :meth:`_restored_sampling_state` where they set up (it raises if a checkpoint was loaded without its state)."""
    sampling_trace: bool = False
    """Write every sampled unit to sampling_trace.jsonl (tests, debugging)."""
    _restored_state = None

    def _sampling_state(self):
        raise NotImplementedError

    def _restored_sampling_state(self):
        state = self._restored_state
        if state is not None and "missing" in state:
            raise RuntimeError(
                f"{type(self).__name__}: no sampling state for epoch {self.current_epoch} next to the checkpoint "
                f"{state['missing']} (the file *_sampling.pt that nnunetv2_ext >= 0.2 writes with it); cannot "
                f"continue this training exactly")
        return state

    def save_checkpoint(self, filename: str) -> None:
        if self.local_rank == 0 and not self.disable_checkpointing and self._sampling_state() is not None:
            self.write_sampling_sidecar(filename)  # first: see the module docstring
        super().save_checkpoint(filename)

    def write_sampling_sidecar(self, filename: str) -> None:
        """Writes the sampling state for the checkpoint ``filename`` (called just before nnU-Net writes it; a
        subclass may hook here, e.g. a test that kills the run between the two writes)."""
        write_state(filename, self.current_epoch + 1, self._sampling_state())

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        # checked when training continues; --val and inference do not need the sampling state
        self._restored_state = {"missing": repr(filename_or_checkpoint)[:200]}
        if isinstance(filename_or_checkpoint, str):
            state = read_state(filename_or_checkpoint, self.current_epoch)
            if state is not None:
                self._restored_state = state

    def on_train_start(self):
        super().on_train_start()
        if self.sampling_trace:
            self._trace({"phase": "start", "epoch": self.current_epoch})

    def on_train_end(self):
        super().on_train_end()
        latest = sidecar_path(os.path.join(self.output_folder, "checkpoint_latest.pth"))
        if self.local_rank == 0 and os.path.isfile(latest):  # nnU-Net has just removed checkpoint_latest.pth
            os.remove(latest)

    def _trace(self, record: dict) -> None:
        if self.local_rank == 0:
            with open(os.path.join(self.output_folder, "sampling_trace.jsonl"), "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
