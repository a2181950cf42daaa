"""PNSSHESSMixin: nnU-Net hook glue around :class:`~nnunetv2_ext.sampling.controller.SamplingController`.

    class nnUNetTrainerPNSSHESS(PNSSHESSMixin, nnUNetTrainer): pass
    class MyLossPNSSHESS(PNSSHESSMixin, nnUNetTrainerDiceLoss): pass        # any other variant, same two lines

Settings: the class attribute ``sampling`` (a :class:`SamplingParameters`); see ``trainers_docs/nnUNetTrainerPNSSHESS.md``.
What each hook does:

- ``_build_loss``: wraps the variant's loss so that, with forward scoring, the training forward pass also yields the
  per-sample DSC (Eq. 1) of the full-resolution output, on the device (no extra pass).
- ``get_dataloaders``: nnU-Net's, with the training loader swapped for :class:`nnUNetDataLoaderPNSSHESS` behind an
  :class:`OrderedBatchStream`; the controller and the worker-shared batch schedule are built here.
- ``on_train_epoch_start``: sets this epoch's main iterations (fewer after a mini epoch with a neutral budget).
- ``on_train_epoch_end``: scores (forward scores exchanged between DDP ranks; the exact pass split over them),
  hard set (Eq. 8), mini-epoch plan published to the workers, mini epoch trained, epoch record logged.
- ``save_checkpoint`` / ``load_checkpoint``: the controller's state in an atomically written sidecar file.
"""
from __future__ import annotations

from typing import List, Optional

import numpy as np
import torch


from nnunetv2_ext.sampling.controller import SamplingController
from nnunetv2_ext.sampling.data_loader import nnUNetDataLoaderPNSSHESS
from nnunetv2_ext.sampling.distributed import gather_batch_sizes, gather_scores, rank_and_world
from nnunetv2_ext.sampling.hess import DiceRecordingLoss
from nnunetv2_ext.sampling.parameters import SamplingParameters
from nnunetv2_ext.sampling.report import log_line, plot_sampling_progress, write_sampling_log
from nnunetv2_ext.sampling.shared_state import MAIN, MINI, BatchSchedule, OrderedBatchStream
from nnunetv2_ext.sampling.slice_table import build_slice_table
from nnunetv2_ext.nnunet_adapters.checkpoint_sidecar import SamplingStateMixin
from nnunetv2_ext.nnunet_adapters.dataloaders import build_dataloaders
from nnunetv2_ext.sampling.exact_scoring import exact_scores

LEGACY_ATTRIBUTES = ("pnss_enabled", "pnss_alpha", "pnss_beta", "pnss_r_min", "hess_enabled", "hess_outlier_threshold",
                     "hess_max_epoch_cost", "hess_scoring", "hess_exact_every", "sampling_seed")


class PNSSHESSMixin(SamplingStateMixin):
    sampling: SamplingParameters = SamplingParameters()
    #: sampling_progress.png after every epoch (the tiny test trainers draw it after the last epoch only)
    plot_progress_every_epoch = True

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        # explicit signature: nnU-Net records the init arguments by introspecting the most derived __init__
        super().__init__(plans, configuration, fold, dataset_json, device)
        name = type(self).__name__
        legacy = [a for a in LEGACY_ATTRIBUTES if hasattr(type(self), a)]
        if legacy:
            raise ValueError(f"{name}: {legacy} are no longer read; set the class attribute "
                             f"sampling = SamplingParameters(...) instead (e.g. pnss_alpha -> alpha)")
        if not isinstance(self.sampling, SamplingParameters):
            raise ValueError(f"{name}.sampling must be a SamplingParameters, got {type(self.sampling).__name__}")
        self.controller: Optional[SamplingController] = None
        self._batch_schedule: Optional[BatchSchedule] = None
        self._phase = MAIN
        self._scores: List = []

    def _build_loss(self):
        lm = self.label_manager
        return DiceRecordingLoss(super()._build_loss(), lm.has_regions, lm.ignore_label)

    # ------------------------------------------------------------------------------------------------ set-up
    def _setup_sampling(self, dataset_tr) -> None:
        """Slice table, controller (epoch plan, hardness) and batch schedule; checks the data before any training."""
        table = build_slice_table(dataset_tr, list(dataset_tr.identifiers), self.preprocessed_dataset_folder,
                                  self.label_manager.ignore_label, log=lambda m: self.print_to_log_file(m))
        self.rank_batch_sizes = gather_batch_sizes(self.batch_size)
        if not hasattr(self, "_nominal_iterations"):
            self._nominal_iterations = self.num_iterations_per_epoch
        restored = self._restored_sampling_state()
        try:
            self.controller = SamplingController(self.sampling, table, self.num_epochs, self._nominal_iterations,
                                                 sum(self.rank_batch_sizes))
            if restored is not None:
                self.controller.load_state_dict(restored, self.current_epoch)
        except ValueError as e:
            raise RuntimeError(f"{type(self).__name__}, fold {self.fold} of {self.preprocessed_dataset_folder} "
                               f"({len(table.identifiers)} training cases): {e}") from None
        c = self.controller
        self._batch_schedule = BatchSchedule(
            self.current_epoch, self.num_epochs, self._nominal_iterations, c.plan.hess_round,
            c.max_mini_iterations * sum(self.rank_batch_sizes), self.sampling.budget == "neutral",
            c.mini_iterations_of(self.current_epoch - 1))
        self.print_to_log_file(
            f"PNSS/HESS set-up: {len(table.identifiers)} training cases, {table.num_units} slices along axis 0 "
            f"({int((table.k == 0).sum())} without foreground), {self.sampling}, mini epochs capped at "
            f"{c.max_mini_iterations} iterations\nPNSS/HESS epoch plan ({c.plan.samples_per_epoch} samples per "
            f"nnU-Net epoch):\n{c.plan.summary()}")
        if restored is not None:
            self.print_to_log_file(f"PNSS/HESS: restored from checkpoint: {c.num_scored()} scored units, "
                                   f"{len(c.records)} epoch records, continuing at epoch {self.current_epoch}")

    def get_dataloaders(self):
        def train_loader(dataset_tr, initial_patch_size, patch_size, transforms, **common):
            return nnUNetDataLoaderPNSSHESS(dataset_tr, self.batch_size, initial_patch_size, patch_size,
                                            self.label_manager, self.controller.table, self.controller.plan.r,
                                            self.sampling.sampling, self.sampling.far_share, self._batch_schedule,
                                            rank_batch_sizes=self.rank_batch_sizes, rank=rank_and_world()[0],
                                            transforms=transforms, **common)

        mt_train, mt_val = build_dataloaders(self, train_loader, setup=self._setup_sampling)
        stream = OrderedBatchStream(mt_train, self._batch_schedule)
        stream.prefetch()
        _ = next(mt_val)
        return stream, mt_val

    # ------------------------------------------------------------------------------------------------ training
    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self.num_iterations_per_epoch = self.controller.main_iterations(self.current_epoch)  # nnU-Net's loop reads it
        self._phase = MAIN
        self._scores = []

    def train_step(self, batch: dict) -> dict:
        if batch["epoch"] != self.current_epoch or batch["phase"] != self._phase:
            raise RuntimeError(f"PNSS/HESS: got a batch built for epoch {batch['epoch']} ({batch['phase']}) while "
                               f"training epoch {self.current_epoch} ({self._phase}); batch order is broken")
        record = self._phase == MAIN and self.controller.records_forward_scores
        self.loss.record = record
        try:
            out = super().train_step(batch)
        finally:
            self.loss.record = False
        if record:
            self._scores.append((batch["units"], self.loss.last_sample_dsc))
        if self.sampling_trace:
            self._trace({"epoch": int(batch["epoch"]), "phase": batch["phase"], "batch_index": int(batch["batch_index"]),
                         "units": batch["units"].tolist(), "far": batch["far"].tolist()})
        return out

    def on_train_epoch_end(self, train_outputs: List[dict]):
        epoch, c = self.current_epoch, self.controller
        forward = None
        if c.records_forward_scores:
            units = np.concatenate([u for u, _ in self._scores]) if self._scores else np.zeros(0, np.int64)
            dsc = torch.cat([d for _, d in self._scores]).float().cpu().numpy() if self._scores \
                else np.zeros(0, np.float32)  # one device sync per epoch
            forward = gather_scores(units, dsc)
            self._scores = []
        exact = self.score_units(c.exact_units(epoch)) if c.needs_exact_pass(epoch) else None
        rnd = c.end_main_phase(epoch, forward, exact)
        mini_losses = []
        if rnd is not None:
            if self.sampling_trace:
                self._trace({"epoch": epoch, "phase": "hard_set", "units": rnd.hard.hard_units.tolist(),
                             "selected": np.flatnonzero(c.selected(epoch)).tolist(), "r": c.ratio(epoch)})
            self._batch_schedule.publish_mini_epoch(epoch, rnd.plan)
            self._phase = MINI
            for _ in range(len(rnd.plan)):
                mini_losses.append(self.train_step(next(self.dataloader_train))["loss"])
            self._phase = MAIN
        rec = c.finish_epoch(epoch, self.num_iterations_per_epoch, rnd,
                             float(np.mean(mini_losses)) if mini_losses else None)
        self.print_to_log_file(log_line(rec))
        super().on_train_epoch_end(train_outputs)

    def score_units(self, units: np.ndarray):
        """HESS's exact scores: ``(units, DSC per unit)`` from the paper's scoring pass over ``units`` without
        augmentation (shared between DDP ranks). The one override point for where scores come from (a test injects
        known scores here)."""
        return exact_scores(self, self.controller.table, units)

    def on_epoch_end(self):
        super().on_epoch_end()
        if self.local_rank == 0:
            write_sampling_log(self.controller.records, self.output_folder)
            if self.plot_progress_every_epoch or self.current_epoch >= self.num_epochs:
                plot_sampling_progress(self.controller.records, self.output_folder)

    def on_train_end(self):
        super().on_train_end()  # nnU-Net stops only its own augmenter types; ours is stopped here
        if isinstance(self.dataloader_train, OrderedBatchStream):
            self.dataloader_train._finish()

    def _sampling_state(self):
        return self.controller.state_dict() if self.controller is not None else None
