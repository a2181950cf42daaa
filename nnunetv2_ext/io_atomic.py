"""Output folders of our commands: one rule for every command, and "write to a temporary folder, then swap it in".

The rule (:func:`check_output_folder`), checked before any work starts:

- an output folder that *is* or *contains* one of the command's inputs is refused, with or without ``--overwrite``
  (replacing it would delete the input). One *inside* an input folder is allowed (``nnUNetv2_ext_evaluate`` writes
  its report into ``PRED/ext_evaluation`` by default, as nnU-Net writes ``summary.json`` into the prediction
  folder): the next rule means that replacing it can only ever remove a folder this package wrote;
- a folder that does not exist, or an existing *empty* folder, is fine;
- a folder with files needs ``--overwrite``, and then only a folder this package wrote itself (it carries the
  marker file :data:`MARKER`) is replaced: ``--overwrite`` never deletes a folder of someone else's files.

Resumable work folders (``nnUNetv2_ext_benchmark -o``, ``nnUNetv2_ext_self_train --work-dir``) follow the same rule
with "continue" in place of "replace" (:func:`check_work_folder`): new or empty is fine, a folder of our own is
continued, a folder of someone else's files is refused with the same message.

:func:`write_folder_atomically` writes into a hidden sibling folder and renames it into place at the end, so a failure
or a kill leaves no half-written output and keeps an old one.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Callable, Iterable, Optional, TypeVar

MARKER = ".nnunetv2_ext_output.json"

T = TypeVar("T")


class OutputFolderError(ValueError):
    """An output folder that cannot be used (the message names it and says why)."""


def _real(path: str) -> str:
    return os.path.realpath(os.path.abspath(path))


def _inside(child: str, parent: str) -> bool:
    return child == parent or child.startswith(parent.rstrip(os.sep) + os.sep)


def overlapping_input(folder: str, inputs: Iterable[Optional[str]]) -> Optional[str]:
    """The first input that ``folder`` is or contains (symbolic links resolved), else None."""
    out = _real(folder)
    for path in inputs:
        if path is not None and _inside(_real(path), out):
            return path
    return None


def written_by_us(folder: str) -> Optional[str]:
    """The command recorded in ``folder``'s marker, or None when the folder has no marker of ours."""
    try:
        with open(os.path.join(folder, MARKER), encoding="utf-8") as f:
            return json.load(f).get("written_by") or "nnunetv2_ext"
    except (OSError, ValueError, AttributeError):
        return None


def _check_inputs_and_kind(folder: str, inputs: Iterable[Optional[str]], option: str) -> bool:
    """Refuses an output that is or contains an input, or that exists and is not a folder; True when it holds files."""
    clash = overlapping_input(folder, inputs)
    if clash is not None:
        raise OutputFolderError(f"the output folder {folder} ({option}) is or contains the input "
                                f"{clash}; writing there would replace the input: give another {option}")
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise OutputFolderError(f"the output {folder} ({option}) exists and is not a folder")
    return os.path.isdir(folder) and bool(os.listdir(folder))


def _foreign(folder: str, option: str, what: str) -> OutputFolderError:
    return OutputFolderError(f"the output folder {folder} ({option}) holds files that nnunetv2_ext did not write "
                             f"(no {MARKER}); {what}: give another {option} or empty it yourself")


def check_output_folder(folder: str, inputs: Iterable[Optional[str]] = (), overwrite: bool = False,
                        option: str = "-o") -> None:
    """Raises :class:`OutputFolderError` when ``folder`` may not be written (the module's rule)."""
    if _check_inputs_and_kind(folder, inputs, option):
        if not overwrite:
            raise OutputFolderError(f"the output folder {folder} ({option}) exists and holds files; pass "
                                    f"--overwrite to replace it (or give another {option})")
        if written_by_us(folder) is None:
            raise _foreign(folder, option, "--overwrite only replaces our own output folders")
    _check_writable(folder, option)


def check_work_folder(folder: str, inputs: Iterable[Optional[str]] = (), option: str = "-o",
                      own_files: Iterable[str] = ()) -> bool:
    """The rule for resumable work folders: True when ``folder`` holds earlier work of ours (our marker, or one of
    ``own_files``, e.g. a state file written before markers existed), which the command then continues; False for a
    new or empty folder. Raises :class:`OutputFolderError` for an input clash or a folder of someone else's files."""
    if _check_inputs_and_kind(folder, inputs, option):
        if written_by_us(folder) is not None or any(os.path.isfile(os.path.join(folder, f)) for f in own_files):
            return True
        raise _foreign(folder, option, "a work folder is only continued when it is our own")
    _check_writable(folder, option)
    return False


def _check_writable(folder: str, option: str) -> None:
    existing = os.path.abspath(folder)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK):
        raise OutputFolderError(f"cannot write to {folder} ({existing} is not a writable folder); give another "
                                f"{option}")


def mark_folder(folder: str, written_by: str) -> None:
    with open(os.path.join(folder, MARKER), "w", encoding="utf-8") as f:
        json.dump({"written_by": written_by}, f)


def write_folder_atomically(folder: str, write: Callable[[str], T], written_by: Optional[str] = None) -> T:
    """Runs ``write(tmp_folder)`` in a hidden sibling of ``folder`` and then swaps the finished folder in (an existing
    one is removed only after the new one is complete). With ``written_by`` the folder gets the marker that lets a
    later ``--overwrite`` replace it. A failure (or Ctrl-C) removes the temporary folder and keeps the old one."""
    folder = os.path.abspath(folder)
    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(folder)}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        result = write(tmp)
        if written_by is not None:
            mark_folder(tmp, written_by)
        if os.path.exists(folder):
            old = os.path.join(parent, f".{os.path.basename(folder)}.old-{os.getpid()}")
            os.rename(folder, old)
            os.rename(tmp, folder)
            shutil.rmtree(old)
        else:
            os.rename(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result
