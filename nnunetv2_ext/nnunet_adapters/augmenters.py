"""Seeded, ordered data augmentation workers for any trainer.

nnU-Net's ``get_dataloaders`` returns ``NonDetMultiThreadedAugmenter`` objects with ``seeds=None``: each worker seeds
itself from the OS and batches arrive in whatever order the workers finish them, so two runs never see the same
batches. :func:`seeded_augmenter` turns what a trainer's ``get_dataloaders`` returned (nnU-Net's, or one of ours
built by ``build_dataloaders``) into batchgenerators' ``MultiThreadedAugmenter`` over the *same* data loader and
transforms, with one fixed seed per worker: batchgenerators then guarantees the same batches in the same order
(round robin over the workers) for the same seeds. The single-threaded augmenter (``nnUNet_n_proc_DA=0``) runs in the
main process, which the caller seeds.

It relies on four attributes of batchgenerators' augmenters (``generator``, ``transform``, ``num_processes``,
``pin_memory``); ``tests/test_benchmark.py`` pins them.

:func:`one_thread_in_workers`: every worker process we start runs torch with one thread. Workers are forked; a process
forked after its parent has used OpenMP with several threads (the network ran on the CPU: training, the exact scoring
pass) deadlocks in its first multi-threaded OpenMP region (GNU libgomp is not fork-safe). The augmentation's matrix
products are such a region, so workers started mid-run (hard-sample pre-training's stage switch) hung for ever on
CPU runs. One thread is also what nnU-Net's workers get on a GPU run (``nnUNetv2_train`` sets one thread for cuda).
"""
from __future__ import annotations

from typing import List, Tuple

import torch
from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter


VALIDATION_OFFSET = 500


class _OneThread:
    """``set_thread_id`` of a data loader, which batchgenerators calls first in each worker process: sets torch to
    one thread there, then calls the loader's own."""

    def __init__(self, set_thread_id):
        self.set_thread_id = set_thread_id

    def __call__(self, thread_id):
        torch.set_num_threads(1)
        self.set_thread_id(thread_id)


def one_thread_in_workers(loader):
    """The data loader, changed so that the worker processes of an augmenter over it run torch with one thread
    (module docstring); the main process is untouched. Idempotent."""
    if not isinstance(loader.set_thread_id, _OneThread):
        loader.set_thread_id = _OneThread(loader.set_thread_id)
    return loader


def worker_seeds(seed: int, num_processes: int, offset: int = 0) -> List[int]:
    """One seed per worker, ``seed * 1000 + offset + i``: runs with different seeds never share a worker's stream
    (``seed + i`` would give seed 1's second worker the stream of seed 2's first)."""
    return [seed * 1000 + offset + i for i in range(num_processes)]


def seeded_augmenter(augmenter, seed: int, offset: int = 0) -> Tuple[object, str]:
    """(augmenter with fixed per-worker seeds and ordered batches, what was done, for the log).

    nnU-Net's ``get_dataloaders`` has already started its unseeded workers (and consumed one warm-up batch): they
    are stopped and the same data loader and transforms restarted under a seeded ``MultiThreadedAugmenter`` (the
    data loader in the main process was never advanced by the workers, which work on forked copies). An augmenter
    that is already seeded and ordered (our ``build_dataloaders`` with the trainer's ``seed``), directly or inside
    a wrapper's ``augmenter`` attribute, is kept. Anything else raises TypeError rather than running unseeded."""
    if isinstance(augmenter, SingleThreadedAugmenter):
        return augmenter, "in the main process (seeded with the run)"
    inner = augmenter if isinstance(augmenter, MultiThreadedAugmenter) else getattr(augmenter, "augmenter", None)
    if isinstance(inner, MultiThreadedAugmenter) and inner.seeds is not None and None not in inner.seeds:
        return augmenter, f"kept: {inner.num_processes} ordered workers seeded by the trainer's loader {inner.seeds}"
    if isinstance(augmenter, (NonDetMultiThreadedAugmenter, MultiThreadedAugmenter)):
        augmenter._finish()
        seeds = worker_seeds(seed, augmenter.num_processes, offset)
        seeded = MultiThreadedAugmenter(one_thread_in_workers(augmenter.generator), augmenter.transform,
                                        augmenter.num_processes,
                                        num_cached_per_queue=2, seeds=seeds, pin_memory=augmenter.pin_memory)
        _ = next(seeded)  # nnU-Net's warm-up, as in its get_dataloaders
        return seeded, f"restarted: {augmenter.num_processes} ordered workers with seeds {seeds}"
    raise TypeError(f"cannot seed a {type(augmenter).__name__}: the trainer builds its own kind of augmenter; give "
                    f"it a seeded batchgenerators augmenter (see nnunetv2_ext.nnunet_adapters.augmenters)")
