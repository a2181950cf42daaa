"""Hard-sample pre-training in one nnU-Net run (Zhang et al. 2019; logic in :mod:`nnunetv2_ext.sampling.hard_pretrain`).

    nnUNetv2_train DATASET 2d FOLD -tr nnUNetTrainerHardPretrain

Stage 1 (the first ``stage1_fraction`` of the epochs) trains on part B of the fold's training cases; at the first
epoch of stage 2 the stage-1 model scores every slice of part A without augmentation, the hard ones join B (mirrored)
and training continues. The workers never see an attribute change: the training loader is rebuilt at the switch with
the stage-2 pool (a few seconds, once). The split, the scores and the hard set travel in the checkpoint's sidecar,
so ``--c`` resumes in the right stage with the same data; a run resumed before the classification classifies again
(with the same weights, so the same hard set).
"""
from __future__ import annotations

import json
import os
from dataclasses import replace
from typing import Optional

import numpy as np
import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_ext.benchmark.budget import peer_trainer_name
from nnunetv2_ext.sampling.data_loader import nnUNetDataLoaderUnits
from nnunetv2_ext.sampling.hard_pretrain import (HardPretrainParameters, Split, baseline_min_slice_dsc, check_split,
                                                 classification_record, classify, plot_classification, stage2_pool,
                                                 stratified_split, units_of)
from nnunetv2_ext.sampling.sampler import UnitPool
from nnunetv2_ext.sampling.slice_table import build_slice_table
from nnunetv2_ext.nnunet_adapters.checkpoint_sidecar import SamplingStateMixin
from nnunetv2_ext.nnunet_adapters.dataloaders import build_dataloaders
from nnunetv2_ext.sampling.exact_scoring import exact_scores

__all__ = ["nnUNetTrainerHardPretrain", "nnUNetTrainerHardPretrainBaselineMin"]


class nnUNetTrainerHardPretrain(SamplingStateMixin, nnUNetTrainer):
    hard_pretrain: HardPretrainParameters = HardPretrainParameters()

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if not isinstance(self.hard_pretrain, HardPretrainParameters):
            raise ValueError(f"{type(self).__name__}.hard_pretrain must be a HardPretrainParameters, got "
                             f"{type(self.hard_pretrain).__name__}")
        self.table = None
        self.split: Optional[Split] = None
        self.classification: Optional[dict] = None
        self.baseline: Optional[dict] = None
        self._baseline_folder = self._check_baseline_folder()

    def _check_baseline_folder(self) -> Optional[str]:
        """The baseline's ``fold_X/validation`` for the paper's threshold rule, checked before any data is read."""
        source = self.hard_pretrain.threshold_baseline
        if source is None:
            return None
        if os.path.isdir(source):
            trainer_folder = source
        else:  # under nnUNetv2_ext_benchmark: the baseline run of the same budget and seed
            from nnunetv2.paths import nnUNet_results
            source = peer_trainer_name(type(self), source)
            trainer_folder = os.path.join(nnUNet_results or "", self.plans_manager.dataset_name,
                                          f"{source}__{self.plans_manager.plans_name}__{self.configuration_name}")
        folder = os.path.join(trainer_folder, f"fold_{self.fold}", "validation")
        ending = self.dataset_json["file_ending"]
        if not os.path.isdir(folder) or not any(f.endswith(ending) for f in os.listdir(folder)):
            raise ValueError(f"{type(self).__name__}: threshold_baseline={source!r}: no validation predictions of "
                             f"fold {self.fold} in {folder}; train the baseline on this fold first "
                             f"(nnUNetv2_train DATASET {self.configuration_name} {self.fold} -tr <baseline>)")
        return folder

    @property
    def stage1_epochs(self) -> int:
        return self.hard_pretrain.stage1_epochs(self.num_epochs)

    def _log(self) -> dict:
        return {"parameters": self.hard_pretrain.as_dict(), "baseline_threshold": self.baseline,
                "num_epochs": self.num_epochs,
                "stage1_epochs": self.stage1_epochs, "split": self.split.stats(self.table),
                "classification": self.classification}

    # ------------------------------------------------------------------------------------------------ data
    def _setup(self, dataset_tr) -> None:
        if self.table is not None:
            return
        name = type(self).__name__
        if self.num_epochs < 2:
            raise RuntimeError(f"{name}: needs at least 2 epochs (one per stage), num_epochs = {self.num_epochs}")
        table = build_slice_table(dataset_tr, list(dataset_tr.identifiers), self.preprocessed_dataset_folder,
                                  self.label_manager.ignore_label, log=lambda m: self.print_to_log_file(m))
        try:
            split = stratified_split(table, self.hard_pretrain.a_share, self.hard_pretrain.seed)
            check_split(table, split)
        except ValueError as e:
            raise RuntimeError(f"{name}, fold {self.fold} of {self.preprocessed_dataset_folder}: {e}") from None
        self.table, self.split = table, split
        state = self._restored_sampling_state()
        if state is not None:
            if HardPretrainParameters.comparable(state["parameters"]) != self.hard_pretrain.as_dict() \
                    or state["slice_table"] != table.signature() \
                    or state["split_a"] != split.a.tolist():
                raise RuntimeError(f"{name}: the checkpoint was trained with other parameters, cases or split")
            self.classification = state["classification"]
        if self._baseline_folder is not None and self.baseline is None:
            self.baseline = baseline_min_slice_dsc(
                self._baseline_folder, os.path.join(self.preprocessed_dataset_folder_base, "gt_segmentations"),
                self.dataset_json["file_ending"], self.dataset_json, self.label_manager.ignore_label)
            self.print_to_log_file(
                f"Hard-sample pre-training: threshold from the baseline {self._baseline_folder}: minimum slice DSC "
                f"{self.baseline['threshold']:.4f} (at {self.baseline['slice']}, over {self.baseline['slices']} "
                f"slices with foreground of {self.baseline['cases']} cases); hard = DSC at or below it")
        st = split.stats(table)
        self.print_to_log_file(
            f"Hard-sample pre-training: {self.hard_pretrain}; stage 1 (B only) = epochs 0-{self.stage1_epochs - 1}, "
            f"stage 2 (B + hard slices of A) from epoch {self.stage1_epochs}\n" + "\n".join(
                f"  part {p}: {len(v['cases'])} cases, {v['slices']} slices, {v['positive_slices']} with foreground "
                f"({100 * v['positive_fraction']:.1f} %)" for p, v in st.items()))

    def _pool(self) -> UnitPool:
        if self.classification is None:  # stage 1
            return UnitPool.from_units(self.table, units_of(self.table, self.split.b))
        return stage2_pool(self.table, self.split, np.asarray(self.classification["hard_units"], np.int64),
                           self.hard_pretrain)

    def get_dataloaders(self):
        def train_loader(dataset_tr, initial_patch_size, patch_size, transforms, **common):
            return nnUNetDataLoaderUnits(dataset_tr, self.batch_size, initial_patch_size, patch_size,
                                         self.label_manager, self.table, self.hard_pretrain.sampling, self._pool(),
                                         transforms=transforms, **common)

        mt_train, mt_val = build_dataloaders(self, train_loader, setup=self._setup)
        _ = next(mt_val)
        return mt_train, mt_val

    # ------------------------------------------------------------------------------------------------ training
    def on_train_epoch_start(self):
        if self.current_epoch >= self.stage1_epochs and self.classification is None:
            self._classify_and_switch()
        super().on_train_epoch_start()

    def _classify_and_switch(self) -> None:
        a_units = units_of(self.table, self.split.a)
        units, dsc = exact_scores(self, self.table, a_units)
        threshold, hard = classify(units, dsc, self.table.positive, self.hard_pretrain,
                                   self.baseline["threshold"] if self.baseline else None)
        self.classification = classification_record(self.table, self.split, units, dsc, threshold, hard,
                                                    self.current_epoch)
        c = self.classification
        self.print_to_log_file(
            f"Hard-sample pre-training: stage 2 from epoch {self.current_epoch}: part A classified by the stage-1 "
            f"model, threshold {threshold:.4f}: {c['n_hard']} hard slices ({c['n_hard_with_foreground']} with "
            f"foreground), {c['n_easy']} easy; stage 2 trains B + the hard slices ({self.hard_pretrain.hard_copies})"
            f"{' + the easy slices' if self.hard_pretrain.keep_easy else ''}")
        if self.local_rank == 0:
            with open(os.path.join(self.output_folder, "hard_pretrain_log.json"), "w", encoding="utf-8") as f:
                json.dump(self._log(), f, indent=1)
            plot_classification(c, os.path.join(self.output_folder, "hard_pretrain.png"))
        for loader in (self.dataloader_train, self.dataloader_val):  # the workers hold the stage-1 pool
            if hasattr(loader, "_finish"):
                loader._finish()
        self.dataloader_train, self.dataloader_val = self.get_dataloaders()

    def train_step(self, batch: dict) -> dict:
        out = super().train_step(batch)
        if self.sampling_trace:
            self._trace({"epoch": self.current_epoch, "units": batch["units"].tolist(),
                         "flip": batch["flip"].tolist()})
        return out

    def _sampling_state(self):
        if self.table is None:
            return None
        return {"parameters": self.hard_pretrain.as_dict(), "slice_table": self.table.signature(),
                "split_a": self.split.a.tolist(), "classification": self.classification}


class nnUNetTrainerHardPretrainBaselineMin(nnUNetTrainerHardPretrain):
    """The paper's threshold rule: a slice of A is hard when the stage-1 model's DSC is at or below the minimum slice
    DSC of plain nnU-Net (``nnUNetTrainer``, trained on the same dataset, plans, configuration and fold first) on its
    validation cases. Refused before training when that validation is missing. Under ``nnUNetv2_ext_benchmark`` the
    baseline is plain nnU-Net's run of the same budget and seed (``nnUNetTrainer_BM...s<seed>``), so list
    ``nnUNetTrainer`` first in ``-tr``."""
    hard_pretrain = replace(HardPretrainParameters(), threshold_baseline="nnUNetTrainer")


# the small CPU variants moved to nnunetv2_ext.trainers.small_variants (issue 21); old imports keep working
from nnunetv2_ext._moved import moved  # noqa: E402

__getattr__ = moved(__name__, ["nnunetv2_ext.trainers.small_variants"], names=['nnUNetTrainerHardPretrainTiny', 'nnUNetTrainerHardPretrainBaselineMinTiny', 'nnUNetTrainerHardPretrainDemo'])
