"""Cascade tumour variant of nnU-Net (issue 6; Qiu et al., Front. Oncol. 2024): organ stage, then tumour stage on the
organ box, as ONE network trained by one trainer.

The network (:class:`nnunetv2_ext.networks.cascade_tumour.CascadeTumorNet`) takes the plans' patch, segments the organ with
the plans' U-Net (stage 1), crops the organ box (+ margin K) out of the patch, multiplies in the salient-change prior
and segments the tumour there (stage 2: the plans' encoder + localisation and focusing modules), pastes the tumour
back and returns ordinary 3-class logits. So ``nnUNetv2_train``, ``nnUNetv2_predict`` and the validation at the end
of training work unchanged and write labels {0 background, 1 organ, 2 tumour}.

Commands (2d or 3d_fullres)::

    nnUNetv2_plan_and_preprocess -d ID -c 3d_fullres
    nnUNetv2_train ID 3d_fullres FOLD -tr nnUNetTrainerCascadeTumor
    nnUNetv2_predict -i IN -o OUT -d ID -c 3d_fullres -f FOLD -tr nnUNetTrainerCascadeTumor

See ``trainers_docs/nnUNetTrainerCascadeTumor.md``.
"""
from __future__ import annotations

import os
from typing import List, Optional

import numpy as np
import torch
from torch._dynamo import OptimizedModule

from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from nnunetv2_ext.losses.cascade import CascadeTumorLoss
from nnunetv2_ext.networks.cascade_tumour import CascadeTumorNet, TumourStageNet
from nnunetv2_ext.two_stage.checks import check_cascade_labels, check_tumour_inside_organ
from nnunetv2_ext.two_stage.prior import SalientChangeModule
from nnunetv2_ext.two_stage.steps import (PAPER_JOINT_REFERENCE_FRACTION, PAPER_SEPARATE_FRACTION, STEP_J,
                                          TrainingStep, step_boundaries, step_for_epoch)
from nnunetv2_ext.losses.shared_boundary import InterClassSharedBoundaryLoss
from nnunetv2_ext.trainers.tiny import TinyTrainingMixin

__all__ = ["nnUNetTrainerCascadeTumor", "nnUNetTrainerCascadeTumorTiny"]


class _LossOnAuxiliary:
    """nnU-Net calls ``self.loss(output, target)``; the cascade loss also needs the network's auxiliary outputs."""

    def __init__(self, loss: CascadeTumorLoss, trainer: "nnUNetTrainerCascadeTumor"):
        self.loss = loss
        self.trainer = trainer

    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss(output, self.trainer.cascade_network.auxiliary, target)


class nnUNetTrainerCascadeTumor(nnUNetTrainer):
    """Cascade organ -> tumour trainer. Parameters (class attributes; derive a class to change them):

    - ``crop_margin`` (K): voxels added around the organ box on each side (int or one per spatial axis).
    - ``empty_organ_fallback``: ``'no_tumour'`` (skip stage 2 where stage 1 finds no organ in the patch) or
      ``'whole_patch'`` (run stage 2 on the whole patch).
    - ``separate_fraction``, ``joint_reference_fraction``: fractions of ``num_epochs`` for steps S and I (paper:
      2 and 4 of 56 epochs); J takes the rest.
    - ``seg2_weight`` (alpha = 0.9), ``shared_boundary_weight`` (beta = 0.4): Eq. 17.
    - ``stage1_ce_weight``: nnU-Net's CE added to stage 1's Dice loss (0 = Dice only, Eq. 10).
    - ``map_kernel_size`` (7): prediction convolutions of stage 2; ``boundary_window`` (15): Eq. 12's window.
    - ``foreground_oversampling`` (0.5, nnU-Net: 0.33): share of patches centred on organ/tumour; stage 2 only
      learns from patches that hold the organ.
    """
    crop_margin = 8
    empty_organ_fallback = "no_tumour"
    separate_fraction = PAPER_SEPARATE_FRACTION
    joint_reference_fraction = PAPER_JOINT_REFERENCE_FRACTION
    seg2_weight = 0.9
    shared_boundary_weight = 0.4
    stage1_ce_weight = 1.0
    map_kernel_size = 7
    boundary_window = 15
    foreground_oversampling = 0.5

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        check_cascade_labels(self.label_manager, self.plans_manager.dataset_name)
        # the cascade has its own multi-output loss; nnU-Net's deep supervision would only add stage-1 outputs
        self.enable_deep_supervision = False
        self.oversample_foreground_percent = self.foreground_oversampling
        self.cascade_step: TrainingStep = STEP_J
        self._epoch_terms: List[dict] = []

    # ---------------------------------------------------------------- network
    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> CascadeTumorNet:
        if num_output_channels != 3:
            raise ValueError(f"{cls.__name__} predicts background, organ and tumour (3 outputs); the dataset "
                             f"{plans_manager.dataset_name} has {num_output_channels} segmentation outputs")
        stage1 = super().build_network_architecture(plans_manager, configuration_manager, num_input_channels, 2,
                                                    False)
        backbone = super().build_network_architecture(plans_manager, configuration_manager, num_input_channels, 2,
                                                      False)
        if not hasattr(backbone, "encoder") or not hasattr(backbone.encoder, "output_channels"):
            raise ValueError(f"{cls.__name__} builds stage 2 on the plans' encoder; architecture "
                             f"{configuration_manager.network_arch_class_name} has no dynamic_network_architectures "
                             f"encoder")
        stage2 = TumourStageNet(backbone.encoder, cls.map_kernel_size)
        return CascadeTumorNet(stage1, stage2, SalientChangeModule(backbone.encoder.conv_op, num_input_channels),
                               crop_margin=cls.crop_margin, empty_organ_fallback=cls.empty_organ_fallback)

    @property
    def cascade_network(self) -> CascadeTumorNet:
        net = self.network.module if self.is_ddp else self.network
        return net._orig_mod if isinstance(net, OptimizedModule) else net

    def _do_i_compile(self):
        # per-sample crops of varying size would recompile the graph all the time
        return False

    def set_deep_supervision_enabled(self, enabled: bool):
        """No-op: stage 1 is built without deep supervision (the cascade loss supervises stage 2's levels)."""

    # ---------------------------------------------------------------- set-up and checks
    def initialize(self):
        if not self.was_initialized:
            self._check_dataset_content()
        super().initialize()
        self.cascade_network.record_auxiliary = True
        start_i, start_j = step_boundaries(self.num_epochs, self.separate_fraction, self.joint_reference_fraction)
        self.print_to_log_file(f"Cascade steps: S epochs [0, {start_i}), I [{start_i}, {start_j}), "
                               f"J [{start_j}, {self.num_epochs}); crop margin K = {self.crop_margin}, "
                               f"empty-organ fallback '{self.empty_organ_fallback}'")

    def _check_dataset_content(self) -> None:
        folder = self.preprocessed_dataset_folder
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"preprocessed data {folder} is missing; run nnUNetv2_plan_and_preprocess first")
        dataset = infer_dataset_class(folder)(folder)
        check_tumour_inside_organ(dataset, dataset.identifiers, self.plans_manager.dataset_name)

    def _build_loss(self):
        stage1 = DC_and_CE_loss({"batch_dice": self.configuration_manager.batch_dice, "smooth": 1e-5,
                                 "do_bg": False, "ddp": self.is_ddp}, {}, weight_ce=self.stage1_ce_weight,
                                weight_dice=1, dice_class=MemoryEfficientSoftDiceLoss)
        self.cascade_loss = CascadeTumorLoss(stage1, self.seg2_weight, self.shared_boundary_weight,
                                             InterClassSharedBoundaryLoss(), self.boundary_window)
        return _LossOnAuxiliary(self.cascade_loss, self)

    # ---------------------------------------------------------------- steps S / I / J
    def apply_cascade_step(self) -> TrainingStep:
        """Sets the step of the current epoch (pure function of the epoch, so it is restored by ``--c``)."""
        self.cascade_step = step_for_epoch(self.current_epoch, self.num_epochs, self.separate_fraction,
                                           self.joint_reference_fraction)
        self.cascade_network.set_prior_enabled(self.cascade_step.prior_enabled)
        return self.cascade_step

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        step = self.apply_cascade_step()
        self.print_to_log_file(f"Cascade {step.describe()}")
        self.cascade_network.reset_counters()
        self._epoch_terms = []

    def _reference_organ(self, target) -> Optional[torch.Tensor]:
        if not self.cascade_step.reference_boxes:
            return None
        return target[:, 0] > 0  # organ box = organ + tumour

    def train_step(self, batch: dict) -> dict:
        self.cascade_network.set_reference_organ(self._reference_organ(batch["target"]))
        try:
            out = super().train_step(batch)
        finally:
            self.cascade_network.set_reference_organ(None)
        self._epoch_terms.append(self.cascade_loss.last_terms)
        return out

    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end(train_outputs)
        net = self.cascade_network
        if self._epoch_terms:
            means = {k: np.nanmean([t[k] for t in self._epoch_terms]) if not all(
                np.isnan(t[k]) for t in self._epoch_terms) else float("nan") for k in self._epoch_terms[0]}
            self.print_to_log_file("Cascade loss terms: " + ", ".join(f"L_{k} {v:.4f}" for k, v in means.items()) +
                                   f"; patches without organ box: {net.num_empty_organ_patches}/{net.num_patches}")

    def validation_step(self, batch: dict) -> dict:
        self.cascade_network.set_reference_organ(self._reference_organ(batch["target"]))
        try:
            return super().validation_step(batch)
        finally:
            self.cascade_network.set_reference_organ(None)

    def perform_actual_validation(self, save_probabilities: bool = False):
        net = self.cascade_network
        net.record_auxiliary = False
        net.set_reference_organ(None)
        try:
            super().perform_actual_validation(save_probabilities)
        finally:
            net.record_auxiliary = True
        self._log_empty_validation_cases()

    def _log_empty_validation_cases(self) -> None:
        """Per case: stage 1 found no organ anywhere (so the documented fallback gave no tumour either)."""
        folder = os.path.join(self.output_folder, "validation")
        if not os.path.isdir(folder):
            return
        ending = self.dataset_json["file_ending"]
        reader = self.plans_manager.image_reader_writer_class()
        for name in sorted(f for f in os.listdir(folder) if f.endswith(ending)):
            seg, _ = reader.read_seg(os.path.join(folder, name))
            if not (seg > 0).any():
                self.print_to_log_file(f"Cascade: {name[:-len(ending)]}: stage 1 found no organ; fallback "
                                       f"'{self.empty_organ_fallback}': no organ and no tumour predicted")


class nnUNetTrainerCascadeTumorTiny(TinyTrainingMixin, nnUNetTrainerCascadeTumor):
    """The cascade shrunk for CPU tests: 10 epochs of 25 iterations = 1 S, 3 I, 6 J, mostly organ patches (stage 1
    finds the phantom's organ after about 80 iterations, so J gets boxes from its own prediction)."""
    tiny_num_epochs = 10
    tiny_iterations_per_epoch = 25
    separate_fraction = 0.1
    joint_reference_fraction = 0.3
    foreground_oversampling = 0.75
