"""Coarse-to-fine trainers (issue 12; Liu, Duan, Zeng 2021, after RSTN, Yu et al. 2018): coarse stage, saliency
transformation, fine stage on the organ box, iterative test at prediction - ONE network
(:class:`~nnunetv2_ext.coarse_to_fine.network.CoarseToFineNet`) trained by one trainer, so ``nnUNetv2_train``,
``nnUNetv2_predict`` and the validation at the end of training work unchanged::

    nnUNetv2_train ID 2d FOLD -tr nnUNetTrainerCoarseToFine        # plain U-Net fine stage
    nnUNetv2_train ID 2d FOLD -tr nnUNetTrainerCoarseToFineMLN     # fine stage with the MLN head
    nnUNetv2_train ID 2d FOLD -tr nnUNetTrainerCoarseToFineMLL     # the paper's MLL model (Eq. 11 on the fine stage)
    nnUNetv2_predict -i IN -o OUT -d ID -c 2d -f FOLD -tr nnUNetTrainerCoarseToFine

Binary (one foreground label), 2d only; see ``trainers_docs/nnUNetTrainerCoarseToFine.md``. Everything here is glue:
the method lives in :mod:`nnunetv2_ext.coarse_to_fine` (network, Eq. 13 loss, step schedule),
:mod:`nnunetv2_ext.coarse_to_fine.iterative` (Algorithm 1) and :mod:`nnunetv2_ext.coarse_to_fine.mln` (MLN head).
"""
from __future__ import annotations

import os
from typing import List, Optional

import numpy as np
import torch
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunetv2_ext.coarse_to_fine.iterative import PAPER_MAX_ITERATIONS, PAPER_TOL, StoppingRule
from nnunetv2_ext.coarse_to_fine.loss import CoarseToFineLoss, MLNLossWeights, coarse_fallback_warning
from nnunetv2_ext.coarse_to_fine.mln import MLNBoundaryTerm, MLNFineNet
from nnunetv2_ext.coarse_to_fine.network import (PAPER_CROP_MARGIN, RSTN_JOINT_REFERENCE_FRACTION,
                                                 RSTN_SEPARATE_FRACTION, CoarseToFineNet, coarse_to_fine_schedule,
                                                 reference_organ)
from nnunetv2_ext.losses import BoundaryLoss, StepUpWeight, SwitchWeight, UncertainPointLoss
from nnunetv2_ext.losses.compound import Schedule
from nnunetv2_ext.losses.multi_level import PAPER_BETA_SWITCH, PAPER_SELECTION_STRIDE
from nnunetv2_ext.nnunet_adapters.auxiliary import LossWithAuxiliary
from nnunetv2_ext.nnunet_adapters.network import unwrap_network
from nnunetv2_ext.nnunet_adapters.predictor import (declare_case, install_case_level_prediction,
                                                    validation_dataset_declaring_cases)
from nnunetv2_ext.trainers.lr_restart import LRRestartMixin
from nnunetv2_ext.transforms import SignedDistanceMapTransform
from nnunetv2_ext.two_stage.boxes import margin_in_mm, normalise_margin
from nnunetv2_ext.two_stage.prior import SalientChangeModule
from nnunetv2_ext.two_stage.steps import STEP_J, TrainingStep

__all__ = ["nnUNetTrainerCoarseToFine", "nnUNetTrainerCoarseToFineMLN", "nnUNetTrainerCoarseToFineMLL"]

install_case_level_prediction()  # nnUNetv2_predict hands the network whole cases (nnunet_adapters.predictor)
ITERATION_LOG_NAME = "coarse_to_fine_iterations.json"
PAPER_MLL_J_START = 0.4
"""Liu, Duan, Zeng start step J (training on predicted boxes) at epoch 8 of about 20."""


class nnUNetTrainerCoarseToFine(nnUNetTrainer):
    """Coarse-to-fine with saliency transformation and iterative test. Parameters (class attributes; derive a class to
    change them; all checked before any data is loaded, and again when nnUNetv2_predict rebuilds the network):

    - ``crop_margin`` (K = 20 voxels per side, paper): margin of the organ box; int or one per in-plane axis, >= 0.
    - ``random_margin_probability`` (0.5, RSTN): share of training samples whose margins are drawn from [0, 2K].
    - ``tol`` (0.99) and ``max_iterations`` (T_max = 10): stopping rule of the iterative test (Algorithm 1).
    - ``separate_fraction`` (1/8), ``joint_reference_fraction`` (3/8): shares of ``num_epochs`` for steps S and I of
      the three-step optimisation (RSTN's 10k / 30k of 80k iterations); J takes the rest.
    - ``coarse_weight`` (ω1 = 0.3), ``fine_weight`` (ω2 = 2/3): Eq. 13.
    - ``foreground_oversampling`` (0.5; nnU-Net 0.33): share of patches centred on the organ.
    """
    crop_margin = PAPER_CROP_MARGIN
    random_margin_probability = 0.5
    tol = PAPER_TOL
    max_iterations = PAPER_MAX_ITERATIONS
    separate_fraction = RSTN_SEPARATE_FRACTION
    joint_reference_fraction = RSTN_JOINT_REFERENCE_FRACTION
    coarse_weight = 0.3
    fine_weight = 2 / 3
    foreground_oversampling = 0.5

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.check_parameters(self.configuration_manager, self.plans_manager.dataset_name)
        self.check_labels(self.label_manager, self.plans_manager.dataset_name)
        self.schedule = coarse_to_fine_schedule(self.separate_fraction, self.joint_reference_fraction)
        self.build_loss_module(nn.Identity())  # raises on bad loss parameters now
        # Eq. 13 supervises both stages itself; nnU-Net's deep supervision would only add coarse outputs
        self.enable_deep_supervision = False
        self.oversample_foreground_percent = self.foreground_oversampling
        self.c2f_step: TrainingStep = STEP_J
        self.current_sdm: Optional[torch.Tensor] = None
        self._epoch_terms: List[dict] = []
        self._epoch_fallbacks = 0

    # ---------------------------------------------------------------- checks
    @classmethod
    def check_parameters(cls, configuration_manager: ConfigurationManager, dataset_name: str) -> None:
        name = cls.__name__
        if len(configuration_manager.patch_size) != 2:
            raise ValueError(f"{name} works on 2d slices (the paper's method); configuration with patch size "
                             f"{tuple(configuration_manager.patch_size)} of {dataset_name} is not 2d. Train the 2d "
                             f"configuration (see trainers_docs/nnUNetTrainerCoarseToFine.md, '3d').")
        normalise_margin(cls.crop_margin, 2)
        StoppingRule(cls.tol, cls.max_iterations)
        if not 0 <= cls.random_margin_probability <= 1:
            raise ValueError(f"{name}: random_margin_probability must lie in [0, 1], got "
                             f"{cls.random_margin_probability}")
        coarse_to_fine_schedule(cls.separate_fraction, cls.joint_reference_fraction)

    @classmethod
    def check_labels(cls, label_manager, dataset_name: str) -> None:
        if label_manager.has_regions:
            raise ValueError(f"{dataset_name}: {cls.__name__} is a binary method (softmax over background / organ); "
                             f"region-based training is not supported")
        if len(label_manager.foreground_labels) != 1:
            raise ValueError(f"{dataset_name}: {cls.__name__} segments ONE organ (binary, as the paper), but "
                             f"dataset.json declares foreground labels {list(label_manager.foreground_labels)}. "
                             f"Make one dataset per organ (the other labels as background) or use nnUNetTrainer.")

    def _check_dataset_content(self) -> None:
        """At least one training case of this fold must contain the organ (the fine stage learns from its box)."""
        folder = self.preprocessed_dataset_folder
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"preprocessed data {folder} is missing; run nnUNetv2_plan_and_preprocess first")
        train_keys, _ = self.do_split()
        dataset = infer_dataset_class(folder)(folder, train_keys)
        organ = self.label_manager.foreground_labels[0]
        for key in dataset.identifiers:
            locations = dataset.load_case(key)[3].get("class_locations", {}).get(organ)
            if locations is not None and len(locations):
                return
        raise ValueError(f"{self.plans_manager.dataset_name}: no training case of fold {self.fold} contains label "
                         f"{organ}; {type(self).__name__} needs the organ to train its fine stage")

    # ---------------------------------------------------------------- network
    @classmethod
    def build_fine_stage(cls, unet: nn.Module, num_classes: int) -> nn.Module:
        """The fine stage from the plans' U-Net with 2C input channels (here: that U-Net itself)."""
        return unet

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> CoarseToFineNet:
        cls.check_parameters(configuration_manager, plans_manager.dataset_name)
        if num_output_channels != 2:
            raise ValueError(f"{cls.__name__} predicts background and one organ (2 outputs); dataset "
                             f"{plans_manager.dataset_name} has {num_output_channels} segmentation outputs")
        coarse = super().build_network_architecture(plans_manager, configuration_manager, num_input_channels, 2,
                                                    False)
        fine_unet = super().build_network_architecture(plans_manager, configuration_manager, 2 * num_input_channels,
                                                       2, False)
        encoder = getattr(fine_unet, "encoder", None)
        if encoder is None or not hasattr(encoder, "strides"):
            raise ValueError(f"{cls.__name__} needs a dynamic_network_architectures U-Net in the plans; got "
                             f"{configuration_manager.network_arch_class_name}")
        total_stride = [int(s) for s in np.prod(np.array([list(s) for s in encoder.strides]), axis=0)]
        return CoarseToFineNet(coarse, cls.build_fine_stage(fine_unet, 2),
                               SalientChangeModule(encoder.conv_op, num_input_channels, concat_image=True),
                               total_stride, cls.crop_margin, StoppingRule(cls.tol, cls.max_iterations),
                               cls.random_margin_probability)

    @property
    def c2f_network(self) -> CoarseToFineNet:
        return unwrap_network(self.network)

    def _do_i_compile(self):
        return False  # per-sample crops of varying size would recompile all the time

    def set_deep_supervision_enabled(self, enabled: bool):
        """No-op: both stages are built without deep supervision (Eq. 13 is the loss)."""

    # ---------------------------------------------------------------- loss
    def build_loss_module(self, region_loss: nn.Module) -> CoarseToFineLoss:
        return CoarseToFineLoss(region_loss, self.coarse_weight, self.fine_weight,
                                ignore_label=self.label_manager.ignore_label)

    def _build_loss(self):
        self.c2f_loss = self.build_loss_module(super()._build_loss())  # nnU-Net's Dice + CE (no deep supervision)
        self.c2f_loss.set_epoch(self.current_epoch, self.num_epochs)
        # Eq. 13 also needs (MLN) the signed distance maps, which the trainer took off the target list
        return LossWithAuxiliary(self.c2f_loss, lambda: self.network, lambda: {"sdm": self.current_sdm})

    # ---------------------------------------------------------------- set-up
    def initialize(self):
        if not self.was_initialized:
            self._check_dataset_content()
        super().initialize()
        net = self.c2f_network
        net.record_auxiliary = True
        spacing = self.configuration_manager.spacing
        k = normalise_margin(self.crop_margin, 2)
        self.print_to_log_file(
            f"Coarse-to-fine: steps {self.schedule.describe(self.num_epochs)}; crop margin K = {k} voxels = "
            f"{tuple(round(v, 1) for v in margin_in_mm(k, spacing))} mm; iterative test tol {self.tol}, T_max "
            f"{self.max_iterations}; loss weights omega1 {self.coarse_weight:g}, omega2 {self.fine_weight:g}")

    # ---------------------------------------------------------------- steps S / I / J
    def apply_step(self) -> TrainingStep:
        """The step of the current epoch (a pure function of it, so ``--c`` resumes in the right step)."""
        self.c2f_step = self.schedule.step_for_epoch(self.current_epoch, self.num_epochs)
        self.c2f_network.set_step(self.c2f_step)
        self.c2f_loss.set_epoch(self.current_epoch, self.num_epochs)
        return self.c2f_step

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        step = self.apply_step()
        weights = ", ".join(f"{k} {v:g}" for k, v in self.c2f_loss.current_weights().items())
        self.print_to_log_file(f"Coarse-to-fine {step.describe()}; loss weights {weights}")
        self._epoch_terms, self._epoch_fallbacks = [], 0

    def _split_target(self, batch: dict) -> dict:
        """Takes the signed distance maps (MLN) off the target and hands the reference organ to the network."""
        target = batch["target"]
        sdm = None
        if isinstance(target, (list, tuple)):
            target, sdm = target[0], target[-1]
        self.current_sdm = None if sdm is None else sdm.to(self.device, non_blocking=True)
        self.c2f_network.set_reference(reference_organ(target, self.label_manager.foreground_labels[0]))
        return dict(batch, target=target)

    def _done_with_batch(self) -> None:
        self.current_sdm = None
        self.c2f_network.set_reference(None)

    def train_step(self, batch: dict) -> dict:
        try:
            out = super().train_step(self._split_target(batch))
        finally:
            self._done_with_batch()
        self._epoch_terms.append(self.c2f_loss.last_terms)
        aux = self.c2f_network.auxiliary
        self._epoch_fallbacks += aux.reference_fallbacks if aux is not None else 0
        return out

    def validation_step(self, batch: dict) -> dict:
        net = self.c2f_network
        net.iterative_test = False  # one pass, as in training: the loss needs the auxiliary outputs
        try:
            return super().validation_step(self._split_target(batch))
        finally:
            net.iterative_test = True
            self._done_with_batch()

    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end(train_outputs)
        if self._epoch_terms:
            keys = self._epoch_terms[0].keys()
            means = {k: np.nanmean([t[k] for t in self._epoch_terms])
                     if not all(np.isnan(t[k]) for t in self._epoch_terms) else float("nan") for k in keys}
            self.print_to_log_file("Coarse-to-fine loss terms: " + ", ".join(f"E_{k} {v:.4f}" for k, v in means.items())
                                   + f"; predicted boxes replaced by reference boxes (empty coarse mask): "
                                     f"{self._epoch_fallbacks}")
        warning = coarse_fallback_warning(self._epoch_fallbacks, self.num_iterations_per_epoch * self.batch_size,
                                          self.c2f_step.reference_boxes, self.coarse_weight)
        if warning:
            self.print_to_log_file(warning)

    # ---------------------------------------------------------------- validation with the iterative test
    def perform_actual_validation(self, save_probabilities: bool = False):
        """nnU-Net's validation, with the whole-case iterative test; each case's line goes to the training log and
        ``validation/coarse_to_fine_iterations.jsonl``, the Table-4 summary to ``coarse_to_fine_iterations.json``."""
        net = self.c2f_network
        net.record_auxiliary, net.iterative_test = False, True
        net.set_reference(None)
        net.iteration_log.reset()
        original_dataset_class = self.dataset_class or infer_dataset_class(self.preprocessed_dataset_folder)
        self.dataset_class = validation_dataset_declaring_cases(
            original_dataset_class, net, os.path.join(self.output_folder, "validation"), self.print_to_log_file)
        try:
            super().perform_actual_validation(save_probabilities)
        finally:
            self.dataset_class = original_dataset_class
            declare_case(net, None)
            net.record_auxiliary = True
        self._write_iteration_log()

    def _write_iteration_log(self) -> None:
        net = self.c2f_network
        if not net.iteration_log.cases:
            return
        suffix = f"_rank{self.local_rank}" if self.is_ddp else ""
        path = os.path.join(self.output_folder, "validation", ITERATION_LOG_NAME.replace(".json", f"{suffix}.json"))
        self.print_to_log_file(net.report(json_path=path))
        self.print_to_log_file(f"Iterative test log: {path}")


class _SignedDistanceMapsInWorkers:
    """The boundary terms need the signed distance maps of the augmented target, computed in the augmentation
    workers and appended to the target list (the trainer takes them off again in ``_split_target``)."""

    def get_training_transforms(self, *args, **kwargs):
        return ComposeTransforms([super().get_training_transforms(*args, **kwargs), self._sdm_transform()])

    def get_validation_transforms(self, *args, **kwargs):
        return ComposeTransforms([super().get_validation_transforms(*args, **kwargs), self._sdm_transform()])

    def _sdm_transform(self) -> SignedDistanceMapTransform:
        return SignedDistanceMapTransform(self.label_manager.foreground_labels, self.configuration_manager.spacing,
                                          self.label_manager.ignore_label)


class nnUNetTrainerCoarseToFineMLN(_SignedDistanceMapsInWorkers, nnUNetTrainerCoarseToFine):
    """Coarse-to-fine with the multi-level structural network as the fine stage's head (Eq. 12-13). Parameters
    besides those of :class:`nnUNetTrainerCoarseToFine`:

    - ``mln_weights`` (the paper's): α (region branch) = β (boundary branch) = 1 from the start; γ (pixel branch)
      and φ (the fused output's E_R) 0 for the first 60 % of the run, then 1
      (:class:`~nnunetv2_ext.coarse_to_fine.loss.MLNLossWeights`).
    - ``mln_num_points`` (1024), ``mln_oversample_ratio`` (3), ``mln_importance_ratio`` (0.75): the pixel branch's
      points (N, k, m of the uncertain-point selection).
    - ``mln_branch_channels`` (None = the decoder's last width), ``mln_aspp_rates`` ((2, 4, 6)), ``mln_d_model``
      (64), ``mln_heads`` (4), ``mln_layers`` (2): sizes the paper leaves open.
    - ``mln_sdm_scale_voxels`` (5): the boundary branch's normalised SDM saturates this many voxels (finest
      in-plane spacing) away from the boundary.
    """
    mln_weights = MLNLossWeights()
    mln_num_points = 1024
    mln_oversample_ratio = 3.0
    mln_importance_ratio = 0.75
    mln_branch_channels: Optional[int] = None
    mln_aspp_rates = (2, 4, 6)
    mln_d_model = 64
    mln_heads = 4
    mln_layers = 2
    mln_sdm_scale_voxels = 5.0

    @classmethod
    def build_fine_stage(cls, unet: nn.Module, num_classes: int) -> nn.Module:
        return MLNFineNet(unet, num_classes, branch_channels=cls.mln_branch_channels, aspp_rates=cls.mln_aspp_rates,
                          num_points=cls.mln_num_points, oversample_ratio=cls.mln_oversample_ratio,
                          importance_ratio=cls.mln_importance_ratio, d_model=cls.mln_d_model, heads=cls.mln_heads,
                          layers=cls.mln_layers)

    def build_loss_module(self, region_loss: nn.Module) -> CoarseToFineLoss:
        ignore = self.label_manager.ignore_label
        scale = self.mln_sdm_scale_voxels * min(self.configuration_manager.spacing)
        # nnU-Net's Dice + CE for the per-crop region branch, without DDP synchronisation (called per sample)
        branch_region = DC_and_CE_loss({"batch_dice": self.configuration_manager.batch_dice, "smooth": 1e-5,
                                        "do_bg": False, "ddp": False}, {}, weight_ce=1, weight_dice=1,
                                       ignore_label=ignore, dice_class=MemoryEfficientSoftDiceLoss)
        return CoarseToFineLoss(region_loss, self.coarse_weight, self.fine_weight, self.mln_weights,
                                MLNBoundaryTerm(scale, ignore_label=ignore), ignore, branch_region)


class nnUNetTrainerCoarseToFineMLL(LRRestartMixin, _SignedDistanceMapsInWorkers, nnUNetTrainerCoarseToFine):
    """The paper's MLL model (Liu, Duan, Zeng 2021): coarse-to-fine with the multi-level structural loss of Eq. 11
    on the fine stage, ``ω1 E_R(coarse) + ω2 (E_R(fine) + α L_B(fine) + β E_P(fine))``, with the paper's settings:

    - ``mll_boundary_weight`` α: 0, +0.2 every 5 % of the run, up to 1 (:class:`StepUpWeight`);
    - ``mll_pixelwise_weight`` β: 0, then 1 from 60 % of the run; ``lr_restart_fraction`` 0.6: the learning rate
      restarts there (:class:`~nnunetv2_ext.trainers.lr_restart.LRRestartMixin`);
    - E_P's points (N = ``mll_num_points``, k = 3, m = 0.75) selected on the stride-4 logits
      (``mll_selection_stride``);
    - step J (training on predicted boxes) from 40 % of the run: S 1/8, I until 40 % (epoch 8 of about 20).

    Everything else as :class:`nnUNetTrainerCoarseToFine`. See ``trainers_docs/nnUNetTrainerMLL.md``.
    """
    mll_boundary_weight: Schedule = StepUpWeight()
    mll_pixelwise_weight: Schedule = SwitchWeight(PAPER_BETA_SWITCH)
    lr_restart_fraction = PAPER_BETA_SWITCH
    mll_num_points = 2048
    mll_oversample_ratio = 3.0
    mll_importance_ratio = 0.75
    mll_selection_stride = PAPER_SELECTION_STRIDE
    joint_reference_fraction = PAPER_MLL_J_START - RSTN_SEPARATE_FRACTION

    def build_loss_module(self, region_loss: nn.Module) -> CoarseToFineLoss:
        ignore = self.label_manager.ignore_label
        points = UncertainPointLoss(self.mll_num_points, self.mll_oversample_ratio, self.mll_importance_ratio, ignore,
                                    self.mll_selection_stride)
        return CoarseToFineLoss(region_loss, self.coarse_weight, self.fine_weight, ignore_label=ignore,
                                fine_terms={"boundary": (BoundaryLoss(ignore), self.mll_boundary_weight),
                                            "pixelwise": (points, self.mll_pixelwise_weight)})


# the small CPU variants moved to nnunetv2_ext.trainers.small_variants (issue 21); old imports keep working
from nnunetv2_ext._moved import moved  # noqa: E402

__getattr__ = moved(__name__, ["nnunetv2_ext.trainers.small_variants"], names=['nnUNetTrainerCoarseToFineTiny', 'nnUNetTrainerCoarseToFineMLNTiny'])
