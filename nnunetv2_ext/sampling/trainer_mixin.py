"""PNSSHESSMixin: plugs PNSS/HESS sampling into any nnU-Net trainer (mixin first in the bases).

    class nnUNetTrainerPNSSHESS(PNSSHESSMixin, nnUNetTrainer): pass
    class MyLossPNSSHESS(PNSSHESSMixin, nnUNetTrainerDiceLoss): pass        # any other variant, same two lines

Parameters are class attributes; set them by subclassing (see ``trainers_docs/nnUNetTrainerPNSSHESS.md``).

What it changes in the trainer, and where:

- ``_build_loss``: wraps the variant's loss so that the training forward pass also yields the per-sample DSC of the
  full-resolution output (computed on the device, no extra pass).
- ``get_dataloaders``: the training loader is :class:`nnUNetDataLoaderPNSSHESS` behind an
  :class:`OrderedBatchStream`; the validation loader is nnU-Net's.
- ``on_train_epoch_end``: after each main epoch: exchange scores between DDP ranks, update the hardness table, choose
  the hard set (Eq. 8), publish the mini-epoch plan to the workers, train the mini epoch, log the epoch record.
- ``save_checkpoint`` / ``load_checkpoint``: the hardness table and the records travel in the checkpoint, so ``--c``
  continues exactly (r is a function of the epoch).
"""
from __future__ import annotations

import json
import os
from typing import List, Optional

import numpy as np
import torch
from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from torch import autocast, nn

from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from nnunetv2.utilities.helpers import dummy_context

from nnunetv2_ext.sampling.data_loader import nnUNetDataLoaderPNSSHESS
from nnunetv2_ext.sampling.distributed import gather_batch_sizes, gather_scores, rank_and_world
from nnunetv2_ext.sampling.hess import HardnessTable, mini_epoch_plan, per_sample_dice, select_hard
from nnunetv2_ext.sampling.pnss import PNSSSchedule
from nnunetv2_ext.sampling.report import epoch_record, log_line, plot_sampling_progress, write_sampling_log
from nnunetv2_ext.sampling.shared_state import MAIN, MINI, BatchSchedule, OrderedBatchStream
from nnunetv2_ext.sampling.slice_table import SliceTable, build_slice_table

CHECKPOINT_KEY = "nnunetv2_ext_sampling"
SCORING_MODES = ("forward", "exact")


class DiceRecordingLoss(nn.Module):
    """Wraps a loss; while ``record`` is set, also stores the per-sample hard DSC (Eq. 1) of the full-resolution
    output (``output[0]`` under deep supervision) as ``last_sample_dsc`` (a (B,) tensor on the output's device)."""

    def __init__(self, loss: nn.Module, has_regions: bool, ignore_label: Optional[int]):
        super().__init__()
        self.loss = loss
        self.has_regions = has_regions
        self.ignore_label = ignore_label
        self.record = False
        self.last_sample_dsc: Optional[torch.Tensor] = None

    def forward(self, output, target):
        value = self.loss(output, target)
        if self.record:
            out0 = output[0] if isinstance(output, (list, tuple)) else output
            tgt0 = target[0] if isinstance(target, (list, tuple)) else target
            self.last_sample_dsc = per_sample_dice(out0.detach(), tgt0, self.has_regions, self.ignore_label)
        return value


class PNSSHESSMixin:
    # ---- PNSS: L(alpha, beta) schedule of the ratio r of kept negative slices (paper's best: 0.2, 5) ------------------
    pnss_enabled: bool = True
    pnss_alpha: float = 0.2
    pnss_beta: int = 5
    pnss_r_min: float = 0.0
    # ---- HESS: replay of hard slices (outlier_threshold < DSC < s_mean, Eq. 8) after every main epoch ---------------
    hess_enabled: bool = True
    hess_outlier_threshold: float = 0.5
    hess_max_epoch_cost: float = 1.5
    """An epoch with its mini epoch costs at most this many plain epochs: mini iterations <= (x - 1) * iterations."""
    hess_scoring: str = "forward"
    """'forward': DSC from the training forward pass (no extra cost, augmented, only units sampled that epoch get a
    new score). 'exact' (the paper): a pass over all selected units without augmentation every hess_exact_every
    epochs."""
    hess_exact_every: int = 1
    sampling_seed: int = 12345
    sampling_trace: bool = False
    """Write every sampled unit to sampling_trace.jsonl (tests, debugging)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        # explicit signature: nnU-Net records the init arguments by introspecting the most derived __init__
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.pnss_schedule = self._validated_sampling_parameters()
        self.slice_table: Optional[SliceTable] = None
        self.hardness: Optional[HardnessTable] = None
        self.sampling_records: List[dict] = []
        self._batch_schedule: Optional[BatchSchedule] = None
        self._restored_sampling_state: Optional[dict] = None
        self._phase = MAIN
        self._scores: List = []

    # ------------------------------------------------------------------------------------------------ parameters
    def _validated_sampling_parameters(self) -> Optional[PNSSSchedule]:
        name = self.__class__.__name__
        if not (self.pnss_enabled or self.hess_enabled):
            raise ValueError(f"{name}: pnss_enabled and hess_enabled are both False; use nnUNetTrainer instead")
        if not 0 <= self.hess_outlier_threshold < 1:
            raise ValueError(f"{name}: hess_outlier_threshold must be in [0, 1), got {self.hess_outlier_threshold}")
        if self.hess_enabled and not self.hess_max_epoch_cost > 1:
            raise ValueError(f"{name}: hess_max_epoch_cost must be > 1 (1.5 = mini epoch at most half an epoch), "
                             f"got {self.hess_max_epoch_cost}")
        if self.hess_scoring not in SCORING_MODES:
            raise ValueError(f"{name}: hess_scoring must be one of {SCORING_MODES}, got {self.hess_scoring!r}")
        if not (isinstance(self.hess_exact_every, int) and self.hess_exact_every >= 1):
            raise ValueError(f"{name}: hess_exact_every must be an integer >= 1, got {self.hess_exact_every!r}")
        if not self.pnss_enabled:
            return None
        try:
            return PNSSSchedule(self.pnss_alpha, self.pnss_beta, self.pnss_r_min)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None

    def sampling_parameters(self) -> dict:
        return {k: getattr(self, k) for k in ("pnss_enabled", "pnss_alpha", "pnss_beta", "pnss_r_min", "hess_enabled",
                                              "hess_outlier_threshold", "hess_max_epoch_cost", "hess_scoring",
                                              "hess_exact_every", "sampling_seed")}

    def ratio(self, epoch: int) -> float:
        return 1.0 if self.pnss_schedule is None else self.pnss_schedule.ratio(epoch)

    @property
    def max_mini_iterations(self) -> int:
        return int(np.floor((self.hess_max_epoch_cost - 1) * self.num_iterations_per_epoch + 1e-9)) \
            if self.hess_enabled else 0

    # ------------------------------------------------------------------------------------------------ set-up
    def _build_loss(self):
        lm = self.label_manager
        return DiceRecordingLoss(super()._build_loss(), lm.has_regions, lm.ignore_label)

    def _setup_sampling(self, dataset_tr) -> None:
        """Slice table, hardness table and batch schedule; checks the data before any training happens."""
        self.slice_table = build_slice_table(dataset_tr, list(dataset_tr.identifiers), self.preprocessed_dataset_folder,
                                             self.label_manager.ignore_label,
                                             log=lambda m: self.print_to_log_file(m))
        table = self.slice_table
        if self.pnss_enabled:
            floor_r = self.ratio(10 ** 9)
            n_min = int(table.selected_mask(floor_r).sum())
            if n_min == 0:
                raise RuntimeError(
                    f"{self.__class__.__name__}: PNSS would select no slice at r={floor_r} (reached at the end of the "
                    f"schedule): none of the {len(table.identifiers)} training cases of fold {self.fold} contains "
                    f"foreground in {self.preprocessed_dataset_folder}. Check the labels or set pnss_r_min > 0.")
        self.hardness = HardnessTable(table.num_units)
        if self._restored_sampling_state is not None:
            self._apply_restored_state(self._restored_sampling_state)
        self.rank_batch_sizes = gather_batch_sizes(self.batch_size)
        self._batch_schedule = BatchSchedule(self.current_epoch, self.num_epochs, self.num_iterations_per_epoch,
                                             self.hess_enabled, self.max_mini_iterations * sum(self.rank_batch_sizes))
        n_neg = int((table.k == 0).sum())
        self.print_to_log_file(
            f"PNSS/HESS set-up: {len(table.identifiers)} training cases, {table.num_units} slices along axis 0 "
            f"({n_neg} cases without foreground), parameters {self.sampling_parameters()}, "
            f"mini epoch capped at {self.max_mini_iterations} iterations")

    def get_dataloaders(self):
        # nnU-Net's own get_dataloaders with the training loader swapped; the transforms come from this trainer's
        # get_training_transforms, so variants that change augmentation keep working.
        if self.dataset_class is None:
            self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
        patch_size = self.configuration_manager.patch_size
        ds_scales = self._get_deep_supervision_scales()
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        lm = self.label_manager
        regions = lm.foreground_regions if lm.has_regions else None
        tr_transforms = self.get_training_transforms(
            patch_size, rotation, ds_scales, mirror_axes, dummy_2d,
            use_mask_for_norm=self.configuration_manager.use_mask_for_norm, is_cascaded=self.is_cascaded,
            foreground_labels=lm.foreground_labels, regions=regions, ignore_label=lm.ignore_label)
        val_transforms = self.get_validation_transforms(ds_scales, is_cascaded=self.is_cascaded,
                                                        foreground_labels=lm.foreground_labels, regions=regions,
                                                        ignore_label=lm.ignore_label)
        dataset_tr, dataset_val = self.get_tr_and_val_datasets()
        self._setup_sampling(dataset_tr)
        rank, _ = rank_and_world()
        common = dict(oversample_foreground_percent=self.oversample_foreground_percent, sampling_probabilities=None,
                      pad_sides=None, probabilistic_oversampling=self.probabilistic_oversampling)
        dl_tr = nnUNetDataLoaderPNSSHESS(dataset_tr, self.batch_size, initial_patch_size, patch_size, lm,
                                         slice_table=self.slice_table, pnss=self.pnss_schedule,
                                         schedule=self._batch_schedule, rank_batch_sizes=self.rank_batch_sizes,
                                         rank=rank, transforms=tr_transforms, **common)
        dl_val = nnUNetDataLoader(dataset_val, self.batch_size, patch_size, patch_size, lm, transforms=val_transforms,
                                  **common)
        n_proc = get_allowed_n_proc_DA()
        if n_proc == 0:
            mt_train, mt_val = SingleThreadedAugmenter(dl_tr, None), SingleThreadedAugmenter(dl_val, None)
        else:
            pin = self.device.type == "cuda"
            mt_train = NonDetMultiThreadedAugmenter(dl_tr, None, n_proc, num_cached=max(6, n_proc // 2), seeds=None,
                                                    pin_memory=pin, wait_time=0.002)
            mt_val = NonDetMultiThreadedAugmenter(dl_val, None, max(1, n_proc // 2),
                                                  num_cached=max(3, n_proc // 4), seeds=None, pin_memory=pin,
                                                  wait_time=0.002)
        stream = OrderedBatchStream(mt_train, self._batch_schedule)
        stream.prefetch()
        _ = next(mt_val)
        return stream, mt_val

    # ------------------------------------------------------------------------------------------------ training
    def on_train_start(self):
        super().on_train_start()
        if self.sampling_trace:
            self._trace({"phase": "start", "epoch": self.current_epoch})

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self._phase = MAIN
        self._scores = []

    def train_step(self, batch: dict) -> dict:
        if batch["epoch"] != self.current_epoch or batch["phase"] != self._phase:
            raise RuntimeError(f"PNSS/HESS: got a batch built for epoch {batch['epoch']} ({batch['phase']}) while "
                               f"training epoch {self.current_epoch} ({self._phase}); batch order is broken")
        record = self._phase == MAIN and self.hess_scoring == "forward"
        self.loss.record = record
        try:
            out = super().train_step(batch)
        finally:
            self.loss.record = False
        if record:
            self._scores.append((batch["units"], self.loss.last_sample_dsc))
        if self.sampling_trace:
            self._trace({"epoch": int(batch["epoch"]), "phase": batch["phase"], "batch_index": int(batch["batch_index"]),
                         "units": batch["units"].tolist()})
        return out

    def on_train_epoch_end(self, train_outputs: List[dict]):
        epoch = self.current_epoch
        r = self.ratio(epoch)
        selected = self.slice_table.selected_mask(r)
        self._update_hardness(epoch, selected)
        hard = select_hard(self.hardness, selected, self.hess_outlier_threshold)
        mini_losses = []
        n_iter = 0
        if self.hess_enabled:
            plan = mini_epoch_plan(hard.hard_units, epoch, self.sampling_seed, sum(self.rank_batch_sizes),
                                   self.max_mini_iterations)
            n_iter = len(plan)
            if self.sampling_trace:
                self._trace({"epoch": epoch, "phase": "hard_set", "units": hard.hard_units.tolist(),
                             "selected": np.flatnonzero(selected).tolist(), "r": r})
            self._batch_schedule.publish_mini_epoch(epoch, plan)
            self._phase = MINI
            for _ in range(n_iter):
                mini_losses.append(self.train_step(next(self.dataloader_train))["loss"])
            self._phase = MAIN
        rec = epoch_record(epoch, r, int(selected.sum()), self.slice_table.num_units, hard, n_iter,
                           self.hardness.dsc[selected], float(np.mean(mini_losses)) if mini_losses else 0.0,
                           self.hess_scoring)
        self.sampling_records.append(rec)
        self.print_to_log_file(log_line(rec))
        super().on_train_epoch_end(train_outputs)

    def _update_hardness(self, epoch: int, selected: np.ndarray) -> None:
        if self.hess_scoring == "forward":
            if self._scores:
                units = np.concatenate([u for u, _ in self._scores])
                dsc = torch.cat([d for _, d in self._scores]).float().cpu().numpy()  # one device sync per epoch
            else:
                units, dsc = np.zeros(0, np.int64), np.zeros(0, np.float32)
            self._scores = []
        elif epoch % self.hess_exact_every == 0:
            units, dsc = self._score_units(np.flatnonzero(selected))
        else:
            return
        units, dsc = gather_scores(units, dsc)
        self.hardness.update(units, dsc, epoch)

    @torch.no_grad()
    def _score_units(self, units: np.ndarray):
        """The paper's scoring pass: DSC of every given unit, without augmentation. Each unit is scored on one patch
        of the training patch size centred on its slice and, in-plane, on the case's foreground (image centre if the
        case has none). DDP ranks share the work and exchange the results."""
        rank, world = rank_and_world()
        units = units[rank::world]
        lm = self.label_manager
        regions = lm.foreground_regions if lm.has_regions else None
        transforms = self.get_validation_transforms(None, is_cascaded=self.is_cascaded,
                                                    foreground_labels=lm.foreground_labels, regions=regions,
                                                    ignore_label=lm.ignore_label)
        dataset = self.dataset_class(self.preprocessed_dataset_folder, list(self.slice_table.identifiers),
                                     folder_with_segs_from_previous_stage=self.folder_with_segs_from_previous_stage)
        patch = list(self.configuration_manager.patch_size)
        is_2d = len(patch) == 2
        pz = 1 if is_2d else patch[0]
        cases, slices = self.slice_table.case_and_slice(units)
        images, targets, out_dsc = [], [], []
        self.network.eval()

        def flush():
            if not images:
                return
            x = torch.stack(images).to(self.device)
            t = torch.stack(targets).to(self.device)
            with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
                out = self.network(x)
            out0 = out[0] if isinstance(out, (list, tuple)) else out
            out_dsc.append(per_sample_dice(out0, t, lm.has_regions, lm.ignore_label).float().cpu())
            images.clear()
            targets.clear()

        for c in np.unique(cases):
            data, seg, seg_prev, props = dataset.load_case(self.slice_table.identifiers[c])
            shape = data.shape[1:]
            locs = [np.asarray(v) for k, v in props["class_locations"].items() if len(v)]
            centre_yx = np.concatenate(locs)[:, 2:].mean(0).round().astype(int) if locs else \
                np.array(shape[1:]) // 2
            yx_patch = patch[-2:]
            for z in slices[cases == c]:
                bbox = [[int(z) - pz // 2, int(z) - pz // 2 + pz]] + \
                       [[int(cy) - p // 2, int(cy) - p // 2 + p] for cy, p in zip(centre_yx, yx_patch)]
                img = torch.from_numpy(crop_and_pad_nd(data, bbox, 0)).float()
                sg = torch.from_numpy(crop_and_pad_nd(seg, bbox, -1)).to(torch.int16)
                if is_2d:
                    img, sg = img[:, 0], sg[:, 0]
                s = transforms(image=img, segmentation=sg)
                images.append(s["image"])
                targets.append(s["segmentation"])
                if len(images) == self.batch_size:
                    flush()
        flush()
        self.network.train()
        dsc = torch.cat(out_dsc).numpy() if out_dsc else np.zeros(0, np.float32)
        order = np.argsort(cases, kind="stable")  # units were visited case by case
        return units[order], dsc

    def on_epoch_end(self):
        super().on_epoch_end()
        if self.local_rank == 0:
            write_sampling_log(self.sampling_records, self.output_folder)
            plot_sampling_progress(self.sampling_records, self.output_folder)

    def on_train_end(self):
        super().on_train_end()  # nnU-Net stops only its own augmenter types; ours is stopped here
        if isinstance(self.dataloader_train, OrderedBatchStream):
            self.dataloader_train._finish()

    def _trace(self, record: dict) -> None:
        if self.local_rank == 0:
            with open(os.path.join(self.output_folder, "sampling_trace.jsonl"), "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    # ------------------------------------------------------------------------------------------------ checkpoints
    def _sampling_state(self) -> dict:
        return {"parameters": self.sampling_parameters(),
                "slice_table": self.slice_table.signature() if self.slice_table is not None else None,
                "hardness": self.hardness.state_dict() if self.hardness is not None else None,
                "records": list(self.sampling_records)}

    def save_checkpoint(self, filename: str) -> None:
        super().save_checkpoint(filename)
        if self.local_rank == 0 and not self.disable_checkpointing and os.path.isfile(filename):
            # nnU-Net builds the checkpoint dict inside save_checkpoint; we add our entry to the written file
            checkpoint = torch.load(filename, map_location="cpu", weights_only=False)
            checkpoint[CHECKPOINT_KEY] = self._sampling_state()
            torch.save(checkpoint, filename)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        checkpoint = torch.load(filename_or_checkpoint, map_location="cpu", weights_only=False) \
            if isinstance(filename_or_checkpoint, str) else filename_or_checkpoint
        state = checkpoint.get(CHECKPOINT_KEY)
        if state is None:
            raise RuntimeError(f"{self.__class__.__name__}: checkpoint {filename_or_checkpoint} has no PNSS/HESS state "
                               f"(written by another trainer?); cannot continue this training exactly")
        if state["parameters"] != self.sampling_parameters():
            raise RuntimeError(f"{self.__class__.__name__}: checkpoint was trained with sampling parameters "
                               f"{state['parameters']}, this trainer has {self.sampling_parameters()}")
        self._restored_sampling_state = state
        if self.slice_table is not None:  # loaded after the data loaders exist (e.g. --val): apply right away
            self._apply_restored_state(state)

    def _apply_restored_state(self, state: dict) -> None:
        if state["slice_table"] is not None and state["slice_table"] != self.slice_table.signature():
            raise RuntimeError(f"{self.__class__.__name__}: the checkpoint's training cases/slice counts differ from "
                               f"fold {self.fold} of {self.preprocessed_dataset_folder}; was the data re-preprocessed "
                               f"or splits_final.json changed?")
        if state["hardness"] is not None:
            self.hardness.load_state_dict(state["hardness"])
        self.sampling_records = [r for r in state["records"] if r["epoch"] < self.current_epoch]
        self.print_to_log_file(f"PNSS/HESS: restored from checkpoint: hardness table with "
                               f"{int(np.isfinite(self.hardness.dsc).sum())} scored units, "
                               f"{len(self.sampling_records)} epoch records, continuing at epoch {self.current_epoch} "
                               f"(r={self.ratio(self.current_epoch):.2f})")
