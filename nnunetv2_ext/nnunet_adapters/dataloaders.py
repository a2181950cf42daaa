"""nnU-Net's ``get_dataloaders`` with the training data loader supplied by the caller.

The transforms come from the trainer's own ``get_training_transforms`` / ``get_validation_transforms``, so variants
that change augmentation keep working. (nnU-Net builds both loaders inside one method, so swapping only the training
one means repeating its body; patching nnU-Net's module globals instead would be worse.) Used by the PNSS/HESS,
hard-sample pre-training, cascade and CPS trainers.
"""
from __future__ import annotations

from typing import Callable, Optional

from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

from nnunetv2_ext.nnunet_adapters.augmenters import VALIDATION_OFFSET, one_thread_in_workers, worker_seeds


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
    # batchgenerators' attribute for "how many workers share this loader" (nnU-Net leaves it at 1): the PNSS/HESS
    # loader numbers its batches by it (nnunetv2_ext.sampling.shared_state)
    dl_tr.number_of_threads_in_multithreaded = n_proc
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
