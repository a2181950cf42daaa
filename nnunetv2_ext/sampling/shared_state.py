"""State shared between the trainer (main process) and nnU-Net's augmentation workers.

Workers are separate processes with their own copy of the data loader, so an attribute set in the main process never
reaches them. Instead every training batch gets a global sequence number and the *batch schedule* says what that
number means. Worker w of W builds batches w, w + W, w + 2W, ... (:meth:`BatchSchedule.claim`): batchgenerators'
ordered augmenter hands batches out round robin over its workers, so they arrive in sequence, and what batch b holds
depends only on its worker's seeded random stream, not on which worker happened to be faster (a shared counter, used
before, made seeded PNSS/HESS runs differ from one run to the next):

    epoch e:  main(e) main batches (PNSS selection at r(e)),
              then mini(e) mini batches (HESS replay of the hard units found after epoch e's main phase)

    main(e) = N                      with budget 'extra'
    main(e) = N - mini(e - 1)        with budget 'neutral' (the mini epoch's iterations come out of the next epoch)

r(e) and whether epoch e ends with a HESS round are fixed before training (:mod:`epoch_plan`), so workers know them.
``mini(e)`` and the mini epoch's plan only exist once the main phase of epoch e has been trained; the trainer
publishes them into shared memory, and a worker that needs them (to build a mini batch, or to know where epoch e + 1
starts) waits for them. Epochs without a HESS round have mini(e) = 0 and never wait. The main process consumes
batches strictly in sequence order (:class:`OrderedBatchStream`), so each batch is trained in exactly the phase it
was built for, with any number of workers (nnUNet_n_proc_DA), fork or spawn.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import time
from typing import Optional, Tuple

import numpy as np

MAIN, MINI = "main", "mini"


class BatchSchedule:
    """Shared counter + published mini-epoch plans. Create in the main process before the workers start.

    ``hess_rounds[e]``: epoch e ends with a HESS round (see :class:`~nnunetv2_ext.sampling.epoch_plan.EpochPlan`).
    ``initial_debt``: with a neutral budget, the mini iterations of epoch ``start_epoch - 1`` (after ``--c``)."""

    def __init__(self, start_epoch: int, num_epochs: int, num_main_iterations: int, hess_rounds, plan_capacity: int,
                 neutral_budget: bool = False, initial_debt: int = 0):
        self.start_epoch = int(start_epoch)
        self.num_epochs = int(num_epochs)
        self.num_main_iterations = int(num_main_iterations)
        self.hess_rounds = np.zeros(self.num_epochs, bool)
        self.hess_rounds[:] = hess_rounds
        self.neutral_budget = bool(neutral_budget)
        self.initial_debt = int(initial_debt) if neutral_budget else 0
        self.plan_capacity = max(1, int(plan_capacity))
        self._claimed = 0  # batches this process (a worker, or the main process without workers) has claimed
        self._mini_iterations = mp.RawArray("q", self.num_epochs + 1)
        np.frombuffer(self._mini_iterations, dtype=np.int64)[:] = -1
        # two plan buffers (epoch parity) so that publishing epoch e + 1 can never touch a plan still being read
        self._plans = mp.RawArray("q", 2 * self.plan_capacity)
        self._plan_epoch = mp.RawArray("q", 2)
        self._plan_shape = mp.RawArray("q", 4)
        self._shutdown = mp.Value("b", 0, lock=False)
        self._owner_pid = os.getpid()
        # worker-local cache: (epoch, index of its first batch, its main iterations)
        self._located: Tuple[int, int, int] = (self.start_epoch, 0, self.main_iterations(self.initial_debt))

    def main_iterations(self, previous_mini: int) -> int:
        """main(e) given mini(e - 1)."""
        return self.num_main_iterations - (previous_mini if self.neutral_budget else 0)

    # ---- main process -------------------------------------------------------------------------------------------
    def publish_mini_epoch(self, epoch: int, plan: np.ndarray) -> None:
        """Makes epoch ``epoch``'s mini-epoch plan (iterations, global batch) visible to the workers."""
        plan = np.asarray(plan, dtype=np.int64)
        if plan.size > self.plan_capacity:
            raise ValueError(f"mini-epoch plan of {plan.size} units exceeds capacity {self.plan_capacity}")
        buf = epoch % 2
        np.frombuffer(self._plans, dtype=np.int64)[buf * self.plan_capacity: buf * self.plan_capacity + plan.size] = \
            plan.ravel()
        np.frombuffer(self._plan_shape, dtype=np.int64)[2 * buf: 2 * buf + 2] = plan.shape if plan.size else (0, 0)
        np.frombuffer(self._plan_epoch, dtype=np.int64)[buf] = epoch
        # written last: a worker that sees the count also sees the plan
        np.frombuffer(self._mini_iterations, dtype=np.int64)[epoch] = plan.shape[0] if plan.size else 0

    def shutdown(self) -> None:
        """Lets workers that wait for a plan exit (called before nnU-Net stops the workers)."""
        self._shutdown.value = 1

    # ---- workers (also the main process with nnUNet_n_proc_DA=0) ------------------------------------------------
    def claim(self, worker: int = 0, workers: int = 1) -> int:
        """Sequence number of the next batch that worker ``worker`` of ``workers`` builds: ``worker + j * workers``
        for its j-th batch (each worker process holds its own copy of the schedule, so j is counted per process)."""
        if not 0 <= worker < workers:
            raise RuntimeError(f"PNSS/HESS: a data loader in worker {worker} was told of {workers} worker(s); set the "
                               f"loader's number_of_threads_in_multithreaded to the augmenter's number of workers")
        b = worker + self._claimed * workers
        self._claimed += 1
        return b

    def _mini_count(self, epoch: int) -> int:
        if epoch >= self.num_epochs or not self.hess_rounds[epoch]:
            return 0
        arr = np.frombuffer(self._mini_iterations, dtype=np.int64)
        while arr[epoch] < 0:
            if self._shutdown.value or os.getppid() == 1:
                raise SystemExit(0)
            time.sleep(0.002)
        return int(arr[epoch])

    def locate(self, batch_index: int) -> Tuple[int, str, int]:
        """(epoch, phase, iteration within that phase) of a batch; may wait for the mini-epoch plan to be published."""
        epoch, first, n_main = self._located
        if batch_index < first:  # only happens if a loader is reused after a restart; walk from the start
            epoch, first, n_main = self.start_epoch, 0, self.main_iterations(self.initial_debt)
        while True:
            if batch_index < first + n_main:
                self._located = (epoch, first, n_main)
                return epoch, MAIN, batch_index - first
            n_mini = self._mini_count(epoch)
            if batch_index < first + n_main + n_mini:
                self._located = (epoch, first, n_main)
                return epoch, MINI, batch_index - first - n_main
            epoch, first, n_main = epoch + 1, first + n_main + n_mini, self.main_iterations(n_mini)

    def mini_plan_row(self, epoch: int, iteration: int) -> np.ndarray:
        buf = epoch % 2
        tagged = int(np.frombuffer(self._plan_epoch, dtype=np.int64)[buf])
        if tagged != epoch:
            raise RuntimeError(f"HESS: mini-epoch plan buffer holds epoch {tagged}, expected {epoch}")
        rows, cols = (int(v) for v in np.frombuffer(self._plan_shape, dtype=np.int64)[2 * buf: 2 * buf + 2])
        plan = np.frombuffer(self._plans, dtype=np.int64)[buf * self.plan_capacity: buf * self.plan_capacity +
                                                           rows * cols].reshape(rows, cols)
        return plan[iteration].copy()


class OrderedBatchStream:
    """Wraps nnU-Net's augmenter and hands out batches in sequence order (workers finish them in any order)."""

    def __init__(self, augmenter, schedule: Optional[BatchSchedule] = None):
        self.augmenter = augmenter
        self.schedule = schedule
        self._expected = 0
        self._buffer = {}

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        while self._expected not in self._buffer:
            item = next(self.augmenter)
            self._buffer[int(item["batch_index"])] = item
        item = self._buffer.pop(self._expected)
        self._expected += 1
        return item

    next = __next__

    def prefetch(self) -> None:
        """Starts the workers and waits for one batch without consuming it (nnU-Net's warm-up)."""
        item = next(self.augmenter)
        self._buffer[int(item["batch_index"])] = item

    def _finish(self):
        if self.schedule is not None:
            self.schedule.shutdown()
        if hasattr(self.augmenter, "_finish"):
            self.augmenter._finish()
