"""Augmentation workers started after the main process has used OpenMP with several threads must not deadlock.

Found on real data: hard-sample pre-training restarts its workers at the stage switch; on a CPU run the network had
used torch's OpenMP pool by then, and the forked workers hung in their first matrix product (libgomp is not
fork-safe), so the run stopped at the switch for good. ``one_thread_in_workers`` sets one torch thread in each worker
before its first batch. This test reproduces the situation in a few seconds: without the fix the worker hangs (the
test then fails on its timeout instead of hanging the suite)."""
import multiprocessing
import os
import queue

import numpy as np
import pytest
import torch

from nnunetv2_ext.nnunet_adapters.augmenters import one_thread_in_workers


class MatmulLoader:
    """A data loader whose batches need a matrix product, as batchgeneratorsv2's spatial transform does."""

    def __init__(self):
        self.thread_id = None

    def __iter__(self):
        return self

    def __next__(self):
        grid = torch.randn(4096, 3)
        return {"x": float(torch.matmul(grid, torch.randn(3, 3)).sum()), "threads": torch.get_num_threads()}

    def set_thread_id(self, thread_id):
        self.thread_id = thread_id


def _worker(loader, out):
    loader.set_thread_id(0)  # what batchgenerators' producer does first in the worker process
    for _ in range(20):
        batch = next(loader)
    out.put(batch["threads"])


def _run_forked_worker(loader, timeout=30.0):
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    p = ctx.Process(target=_worker, args=(loader, out))
    p.start()
    p.join(timeout)
    if p.is_alive():
        p.kill()
        p.join()
        return None
    try:
        return out.get(timeout=5)
    except queue.Empty:
        return None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork start method only")
def test_workers_forked_after_openmp_use_do_not_deadlock():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        a = torch.randn(512, 512)
        float((a @ a).sum())  # the main process uses its OpenMP pool, as a network on the CPU does
        loader = one_thread_in_workers(MatmulLoader())
        assert one_thread_in_workers(loader) is loader  # idempotent
        assert _run_forked_worker(loader) == 1  # finished, with one thread in the worker
        assert torch.get_num_threads() == 2  # the main process keeps its threads
    finally:
        torch.set_num_threads(before)


def test_one_thread_keeps_the_loaders_own_set_thread_id():
    loader = one_thread_in_workers(MatmulLoader())
    before = torch.get_num_threads()
    try:
        loader.set_thread_id(3)
        assert loader.thread_id == 3 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert np.isfinite(next(loader)["x"])
