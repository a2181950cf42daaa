"""nnU-Net glue shared by the sampling trainers (PNSS/HESS, hard-sample pre-training).

- :func:`build_dataloaders`: nnU-Net's ``get_dataloaders`` with the training loader supplied by the caller. The
  transforms come from the trainer's own ``get_training_transforms`` / ``get_validation_transforms``, so variants that
  change augmentation keep working. (nnU-Net builds both loaders inside one method, so swapping only the training
  one means repeating its body; patching nnU-Net's module globals instead would be worse.)
- :func:`exact_scores`: the un-augmented scoring pass over given units with the trainer's network (DDP ranks share
  the work and exchange the results).
- :class:`SamplingStateMixin`: the sampling state's sidecar next to each checkpoint, and the sampling trace.
"""
from __future__ import annotations

import json
import os
from typing import Callable, Optional

import numpy as np
from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from torch import autocast

from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from nnunetv2.utilities.helpers import dummy_context

from nnunetv2_ext.nnunet_adapters.augmenters import VALIDATION_OFFSET, one_thread_in_workers, worker_seeds
from nnunetv2_ext.sampling import checkpoint_state
from nnunetv2_ext.sampling.distributed import gather_scores, rank_and_world
from nnunetv2_ext.sampling.exact_scoring import score_units
from nnunetv2_ext.sampling.slice_table import SliceTable


def build_dataloaders(trainer, make_train_loader: Callable, setup: Callable = None, seed: Optional[int] = None):
    """``setup(dataset_tr)`` runs first (checks before any worker starts); ``make_train_loader(dataset_tr,
    initial_patch_size, patch_size, transforms, **common)`` returns the training data loader. Returns the two
    augmenters (training, validation) as nnU-Net's ``get_dataloaders`` builds them; with ``seed`` (default: the
    trainer's ``seed`` attribute, set by benchmark runs), workers return batches in a fixed order from fixed seeds
    (``nnunet_adapters.augmenters.worker_seeds``), for repeatable runs."""
    if trainer.dataset_class is None:
        trainer.dataset_class = infer_dataset_class(trainer.preprocessed_dataset_folder)
    legacy = seed is not None  # an explicit seed keeps the earlier seed + i scheme (the cascade's committed runs)
    if seed is None:  # a benchmark run's seed (nnunetv2_ext.benchmark.budget) applies to every trainer's loaders
        seed = getattr(trainer, "seed", None)
    patch_size = trainer.configuration_manager.patch_size
    ds_scales = trainer._get_deep_supervision_scales()
    rotation, dummy_2d, initial_patch_size, mirror_axes = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    lm = trainer.label_manager
    regions = lm.foreground_regions if lm.has_regions else None
    tr_transforms = trainer.get_training_transforms(
        patch_size, rotation, ds_scales, mirror_axes, dummy_2d,
        use_mask_for_norm=trainer.configuration_manager.use_mask_for_norm, is_cascaded=trainer.is_cascaded,
        foreground_labels=lm.foreground_labels, regions=regions, ignore_label=lm.ignore_label)
    val_transforms = trainer.get_validation_transforms(ds_scales, is_cascaded=trainer.is_cascaded,
                                                       foreground_labels=lm.foreground_labels, regions=regions,
                                                       ignore_label=lm.ignore_label)
    dataset_tr, dataset_val = trainer.get_tr_and_val_datasets()
    if setup is not None:
        setup(dataset_tr)
    common = dict(oversample_foreground_percent=trainer.oversample_foreground_percent, sampling_probabilities=None,
                  pad_sides=None, probabilistic_oversampling=trainer.probabilistic_oversampling)
    dl_tr = make_train_loader(dataset_tr, initial_patch_size, patch_size, tr_transforms, **common)
    dl_val = nnUNetDataLoader(dataset_val, trainer.batch_size, patch_size, patch_size, lm, transforms=val_transforms,
                              **common)
    n_proc = get_allowed_n_proc_DA()
    if n_proc == 0:
        return SingleThreadedAugmenter(dl_tr, None), SingleThreadedAugmenter(dl_val, None)
    pin = trainer.device.type == "cuda"
    dl_tr, dl_val = one_thread_in_workers(dl_tr), one_thread_in_workers(dl_val)  # workers may start mid-run
    if seed is not None:
        n_val = max(1, n_proc // 2)
        if legacy:  # seed + i overlaps between seeds s and s + 1: not for repeated-seed comparisons
            tr_seeds, val_seeds = [seed + i for i in range(n_proc)], [seed + 100 + i for i in range(n_val)]
        else:
            tr_seeds, val_seeds = worker_seeds(seed, n_proc), worker_seeds(seed, n_val, VALIDATION_OFFSET)
        return (MultiThreadedAugmenter(dl_tr, None, n_proc, 2, tr_seeds, pin_memory=pin),
                MultiThreadedAugmenter(dl_val, None, n_val, 2, val_seeds, pin_memory=pin))
    mt_train = NonDetMultiThreadedAugmenter(dl_tr, None, n_proc, num_cached=max(6, n_proc // 2), seeds=None,
                                            pin_memory=pin, wait_time=0.002)
    mt_val = NonDetMultiThreadedAugmenter(dl_val, None, max(1, n_proc // 2), num_cached=max(3, n_proc // 4),
                                          seeds=None, pin_memory=pin, wait_time=0.002)
    return mt_train, mt_val


def exact_scores(trainer, table: SliceTable, units: np.ndarray):
    """DSC (Eq. 1) of every unit without augmentation (:func:`score_units`), deep supervision off, batches of twice
    the training batch size; DDP ranks take every world-th unit and exchange the results."""
    rank, world = rank_and_world()
    lm = trainer.label_manager
    transforms = trainer.get_validation_transforms(None, is_cascaded=trainer.is_cascaded,
                                                   foreground_labels=lm.foreground_labels,
                                                   regions=lm.foreground_regions if lm.has_regions else None,
                                                   ignore_label=lm.ignore_label)
    dataset = trainer.dataset_class(trainer.preprocessed_dataset_folder, list(table.identifiers),
                                    folder_with_segs_from_previous_stage=trainer.folder_with_segs_from_previous_stage)

    def predict(x):
        with autocast(trainer.device.type, enabled=True) if trainer.device.type == "cuda" else dummy_context():
            return trainer.network(x)

    trainer.network.eval()
    trainer.set_deep_supervision_enabled(False)
    try:
        units, dsc = score_units(np.asarray(units)[rank::world], table, dataset, transforms, predict,
                                 trainer.configuration_manager.patch_size, 2 * trainer.batch_size, trainer.device,
                                 lm.has_regions, lm.ignore_label)
    finally:
        trainer.set_deep_supervision_enabled(trainer.enable_deep_supervision)
        trainer.network.train()
    return gather_scores(units, dsc)


class SamplingStateMixin:
    """What both sampling trainers do with their state: the atomically written sidecar next to every checkpoint
    (:mod:`~nnunetv2_ext.sampling.checkpoint_state`), its check when training continues, and the sampling trace.

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
            self._write_sampling_sidecar(filename)  # first: see checkpoint_state's docstring
        super().save_checkpoint(filename)

    def _write_sampling_sidecar(self, filename: str) -> None:
        checkpoint_state.write_state(filename, self.current_epoch + 1, self._sampling_state())

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        # checked when training continues; --val and inference do not need the sampling state
        self._restored_state = {"missing": repr(filename_or_checkpoint)[:200]}
        if isinstance(filename_or_checkpoint, str):
            state = checkpoint_state.read_state(filename_or_checkpoint, self.current_epoch)
            if state is not None:
                self._restored_state = state

    def on_train_start(self):
        super().on_train_start()
        if self.sampling_trace:
            self._trace({"phase": "start", "epoch": self.current_epoch})

    def on_train_end(self):
        super().on_train_end()
        latest = checkpoint_state.sidecar_path(os.path.join(self.output_folder, "checkpoint_latest.pth"))
        if self.local_rank == 0 and os.path.isfile(latest):  # nnU-Net has just removed checkpoint_latest.pth
            os.remove(latest)

    def _trace(self, record: dict) -> None:
        if self.local_rank == 0:
            with open(os.path.join(self.output_folder, "sampling_trace.jsonl"), "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
