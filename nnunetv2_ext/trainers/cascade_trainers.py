"""Cascade tumour variant of nnU-Net (Qiu et al., Front. Oncol. 2024): organ stage, then tumour stage on the organ
box, as ONE network trained by one trainer.

The network (:class:`nnunetv2_ext.cascade.network.CascadeTumorNet`) segments the organ with the plans' U-Net
(stage 1), crops the organ's box (+ margin K) zoomed to the tumour stage's patch, multiplies in the salient-change
prior and segments the tumour there (stage 2: localisation and focusing modules on the plans' encoder, or the
dual-branch multi-scale encoder), pastes the tumour back and returns ordinary 3-class logits. ``nnUNetv2_train``,
``nnUNetv2_predict`` and the validation at the end of training work unchanged and write labels {0 background,
1 organ, 2 tumour}; at prediction the box is found on the whole case (see :mod:`nnunetv2_ext.nnunet_adapters.predictor`).

Commands (2d or 3d_fullres)::

    nnUNetv2_plan_and_preprocess -d ID -c 3d_fullres
    nnUNetv2_train ID 3d_fullres FOLD -tr nnUNetTrainerCascadeTumor            # or ...DualBranch
    nnUNetv2_predict -i IN -o OUT -d ID -c 3d_fullres -f FOLD -tr nnUNetTrainerCascadeTumor

See ``trainers_docs/nnUNetTrainerCascadeTumor.md``.
"""
from __future__ import annotations

import os
import random
from typing import List, Optional

import numpy as np
import torch
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from nnunetv2_ext.cascade.blocks import (DualBranchEncoder, MultiScaleUNet, TumourStageNet, transfer_encoder_weights,
                                         truncate_encoder)
from nnunetv2_ext.cascade.loss import (PAPER_FOCUS_WEIGHTS, STAGE1_LOSSES, CascadeTumorLoss,
                                       PaperNormalisedSharedBoundaryLoss, TumourStageLoss, focus_level_weights,
                                       stage1_loss)
from nnunetv2_ext.cascade.network import EMPTY_ORGAN_FALLBACKS, CascadeTumorNet
from nnunetv2_ext.nnunet_adapters.auxiliary import LossWithAuxiliary
from nnunetv2_ext.nnunet_adapters.dataloaders import build_dataloaders
from nnunetv2_ext.nnunet_adapters.network import unwrap_network
from nnunetv2_ext.nnunet_adapters.predictor import (declare_case, install_case_level_prediction,
                                                    validation_dataset_declaring_cases)
from nnunetv2_ext.two_stage.boxes import boxes_exceeding_patch, check_margin_leaves_room, margin_in_mm
from nnunetv2_ext.two_stage.checks import check_cascade_labels, check_tumour_inside_organ
from nnunetv2_ext.two_stage.data_loader import OrganCentredDataLoader
from nnunetv2_ext.two_stage.prior import SalientChangeModule
from nnunetv2_ext.two_stage.steps import (PAPER_JOINT_REFERENCE_FRACTION, PAPER_SEPARATE_FRACTION, STEP_J,
                                          StepSchedule, TrainingStep, cascade_schedule)

__all__ = ["nnUNetTrainerCascadeTumor", "nnUNetTrainerCascadeTumorDualBranch",
           "nnUNetTrainerCascadeTumorTransfer", "nnUNetTrainerCascadeTumorPaper"]

ENCODERS = ("plans", "dual_branch")
STAGE1_ENCODERS = ("plans", "multi_scale")
# the stage-1 / stage-2 encoder pairs the transfer step T can copy between (same blocks, stage 2 possibly shallower)
TRANSFER_PAIRS = {("plans", "plans"), ("multi_scale", "dual_branch")}

# nnUNetv2_predict imports this module (to find the trainer) before it builds the network: from then on nnU-Net's
# predictor hands the cascade the whole case instead of tiles (other networks are not affected).
install_case_level_prediction()


def _stage2_total_stride(configuration_manager: ConfigurationManager, num_stages: int) -> List[int]:
    strides = configuration_manager.network_arch_init_kwargs.get("strides")
    if strides is None:
        raise ValueError(f"the cascade builds stage 2 from the plans' encoder; architecture "
                         f"{configuration_manager.network_arch_class_name} has no 'strides' in its arch_kwargs")
    dims = len(configuration_manager.patch_size)
    strides = [[s] * dims if isinstance(s, int) else list(s) for s in strides][:num_stages]
    return [int(v) for v in np.prod(np.array(strides), axis=0)]


class nnUNetTrainerCascadeTumor(nnUNetTrainer):
    """Cascade organ -> tumour trainer. Parameters (class attributes; derive a class to change them):

    - ``crop_margin`` (K = 8): voxels added around the organ box on each side (int or one per cropped axis: 2 in
      2d, 3 in 3d); logged in mm. 2K plus stage 2's total stride must fit in the patch.
    - ``box_jitter`` (0.25): in training each side's margin is drawn from K (1 +- 0.25), so stage 2 sees boxes of
      varying tightness (stage 1's predicted boxes at test time are not the reference's).
    - ``largest_component`` (True): boxes from stage 1's prediction use its largest connected component.
    - ``stage2_max_zoom`` (4): largest magnification of the organ box onto stage 2's patch.
    - ``stage2_num_stages`` (5, the paper's depth: localisation + 4 focusing levels): stage 2 uses the plans'
      first that many encoder stages.
    - ``encoder`` ('plans' | 'dual_branch' = Eq. 1-4): stage 2's encoder.
    - ``stage1_encoder`` ('plans' = the plans' U-Net | 'multi_scale' = the paper's multi-scale U-Net, §3.1).
    - ``transfer_stage1`` (False): the paper's transfer step T - at the start of step S stage 1's encoder weights
      (trained on the organ alone during step P) initialise stage 2's encoder (same kind of encoder required).
    - ``stage1_pretrain_fraction`` (0; 0.2 with T): share of ``num_epochs`` of step P (stage 1 alone) before S.
    - ``empty_organ_fallback``: 'no_tumour' (no organ found: no tumour stage) or 'whole_image'.
    - ``separate_fraction``, ``joint_reference_fraction``: shares of ``num_epochs`` for steps S and I (paper: 2 and 4
      of 56 epochs); J takes the rest.
    - ``seg2_weight`` (alpha = 0.9), ``shared_boundary_weight`` (beta = 0.4): Eq. 17.
    - ``stage1_loss`` ('dice_ce', nnU-Net's default; 'dice' = the paper's Eq. 10).
    - ``focus_weights`` ((1, 1, 2, 4), Eq. 13), ``map_kernel_size`` (7), ``boundary_window`` (15, Eq. 12).
    - ``foreground_oversampling`` (0.5, nnU-Net: 0.33): share of patches holding the organ (placed so that they hold
      its whole box, :class:`~nnunetv2_ext.two_stage.data_loader.OrganCentredDataLoader`).
    - ``seed`` (None): when set, Python / numpy / torch are seeded and the augmentation workers run in a fixed order
      with fixed seeds (``MultiThreadedAugmenter``), so a run is repeatable (tests, ablations).
    """
    crop_margin = 8
    box_jitter = 0.25
    largest_component = True
    stage2_max_zoom = 4.0
    stage2_num_stages = 5
    encoder = "plans"
    stage1_encoder = "plans"
    transfer_stage1 = False
    stage1_pretrain_fraction = 0.0
    empty_organ_fallback = "no_tumour"
    separate_fraction = PAPER_SEPARATE_FRACTION
    joint_reference_fraction = PAPER_JOINT_REFERENCE_FRACTION
    seg2_weight = 0.9
    shared_boundary_weight = 0.4
    stage1_loss = "dice_ce"
    focus_weights = PAPER_FOCUS_WEIGHTS
    map_kernel_size = 7
    boundary_window = 15
    foreground_oversampling = 0.5
    seed: Optional[int] = None

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        if self.seed is not None:
            random.seed(self.seed)
            np.random.seed(self.seed)
            torch.manual_seed(self.seed)
        # before nnU-Net's __init__, which creates the fold folder: a wrong dataset or parameter leaves nothing behind
        plans_manager = PlansManager(plans)
        check_cascade_labels(plans_manager.get_label_manager(dataset_json), plans.get("dataset_name", "?"))
        self.crop_margin_voxels = self._check_parameters(plans_manager, configuration)
        super().__init__(plans, configuration, fold, dataset_json, device)
        # the cascade has its own multi-output loss; nnU-Net's deep supervision would only add stage-1 outputs
        self.enable_deep_supervision = False
        self.oversample_foreground_percent = self.foreground_oversampling
        self.schedule: StepSchedule = cascade_schedule(self.separate_fraction, self.joint_reference_fraction,
                                                       self.stage1_pretrain_fraction)
        self.cascade_step: TrainingStep = STEP_J
        self._epoch_terms: List[dict] = []

    def _check_parameters(self, plans_manager: PlansManager, configuration: str) -> tuple:
        """Class attributes against each other and the plans; returns K per axis (voxels)."""
        cls = type(self).__name__
        if self.stage1_loss not in STAGE1_LOSSES:
            raise ValueError(f"{cls}.stage1_loss must be one of {STAGE1_LOSSES}, got {self.stage1_loss!r}")
        if self.empty_organ_fallback not in EMPTY_ORGAN_FALLBACKS:
            raise ValueError(f"{cls}.empty_organ_fallback must be one of {EMPTY_ORGAN_FALLBACKS}, got "
                             f"{self.empty_organ_fallback!r}")
        if self.encoder not in ENCODERS:
            raise ValueError(f"{cls}.encoder must be one of {ENCODERS}, got {self.encoder!r}")
        if self.stage1_encoder not in STAGE1_ENCODERS:
            raise ValueError(f"{cls}.stage1_encoder must be one of {STAGE1_ENCODERS}, got {self.stage1_encoder!r}")
        if not isinstance(self.transfer_stage1, bool):
            raise ValueError(f"{cls}.transfer_stage1 must be True or False, got {self.transfer_stage1!r}")
        if self.transfer_stage1:
            if (self.stage1_encoder, self.encoder) not in TRANSFER_PAIRS:
                raise ValueError(f"{cls}: the transfer step T copies stage 1's encoder into stage 2's, so they must be "
                                 f"of the same kind ({sorted(TRANSFER_PAIRS)} as (stage1_encoder, encoder)); got "
                                 f"stage1_encoder={self.stage1_encoder!r}, encoder={self.encoder!r}")
            if not (isinstance(self.stage1_pretrain_fraction, (int, float)) and self.stage1_pretrain_fraction > 0):
                raise ValueError(f"{cls}.transfer_stage1 needs a stage-1 pre-training step: stage1_pretrain_fraction "
                                 f"must be in (0, 1), got {self.stage1_pretrain_fraction!r}")
        if not self.stage2_max_zoom >= 1:
            raise ValueError(f"{cls}.stage2_max_zoom must be >= 1, got {self.stage2_max_zoom}")
        if int(self.stage2_num_stages) < 2:
            raise ValueError(f"{cls}.stage2_num_stages must be >= 2, got {self.stage2_num_stages}")
        try:  # validates the fractions
            cascade_schedule(self.separate_fraction, self.joint_reference_fraction, self.stage1_pretrain_fraction)
        except ValueError as e:
            raise ValueError(f"{cls}: {e}") from None
        configuration_manager = plans_manager.get_configuration(configuration)
        patch = [int(p) for p in configuration_manager.patch_size]
        stride = _stage2_total_stride(configuration_manager, self.stage2_num_stages)
        try:
            return check_margin_leaves_room(self.crop_margin, patch, stride)
        except ValueError as e:
            raise ValueError(f"{cls} on {plans_manager.dataset_name} {configuration}: {e}") from None

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
        if cls.stage1_encoder == "multi_scale":
            n_conv = configuration_manager.network_arch_init_kwargs.get("n_conv_per_stage_decoder")
            if n_conv is None or not hasattr(stage1, "encoder"):
                raise ValueError(f"{cls.__name__}: the multi-scale stage 1 is built on the plans' U-Net encoder and "
                                 f"its n_conv_per_stage_decoder; architecture "
                                 f"{configuration_manager.network_arch_class_name} has none")
            stage1 = MultiScaleUNet(DualBranchEncoder(stage1.encoder, num_input_channels), 2, n_conv, False)
        backbone = super().build_network_architecture(plans_manager, configuration_manager, num_input_channels, 2,
                                                      False)
        if not hasattr(backbone, "encoder") or not hasattr(backbone.encoder, "output_channels"):
            raise ValueError(f"{cls.__name__} builds stage 2 on the plans' encoder; architecture "
                             f"{configuration_manager.network_arch_class_name} has no dynamic_network_architectures "
                             f"encoder")
        encoder = truncate_encoder(backbone.encoder, cls.stage2_num_stages)
        if cls.encoder == "dual_branch":
            encoder = DualBranchEncoder(encoder, num_input_channels)
        stage2 = TumourStageNet(encoder, cls.map_kernel_size)
        if cls.transfer_stage1:  # before any training: the two encoders must match
            transfer_encoder_weights(stage1.encoder, stage2.encoder, check_only=True)
        return CascadeTumorNet(stage1, stage2, SalientChangeModule(encoder.conv_op, num_input_channels),
                               crop_margin=cls.crop_margin, stage2_patch_size=configuration_manager.patch_size,
                               max_zoom=cls.stage2_max_zoom, empty_organ_fallback=cls.empty_organ_fallback,
                               box_jitter=cls.box_jitter, largest_component=cls.largest_component)

    @property
    def cascade_network(self) -> CascadeTumorNet:
        return unwrap_network(self.network)

    def _do_i_compile(self):
        # crops and boxes change every step; compiling would recompile all the time
        return False

    def set_deep_supervision_enabled(self, enabled: bool):
        """No-op: stage 1 is built without deep supervision (the cascade loss supervises stage 2's levels)."""

    # ---------------------------------------------------------------- set-up and checks
    def initialize(self):
        if not self.was_initialized:
            self._check_dataset_content()
        super().initialize()
        self.cascade_network.record_auxiliary = True
        spacing = [float(s) for s in self.configuration_manager.spacing]
        mm = ", ".join(f"{v:.1f}" for v in margin_in_mm(self.crop_margin_voxels, spacing))
        net = self.cascade_network
        self.print_to_log_file(
            f"Cascade steps: {self.schedule.describe(self.num_epochs)}; crop margin K = {self.crop_margin_voxels} "
            f"voxels = ({mm}) mm at spacing {tuple(spacing)}; tumour stage patch {net.stage2_patch_size}, zoom <= "
            f"{self.stage2_max_zoom}; stage 2: {self.encoder} encoder, {net.stage2.num_focus_levels} focusing "
            f"levels, weights {focus_level_weights(net.stage2.num_focus_levels, self.focus_weights)}; stage 1: "
            f"{self.stage1_encoder} U-Net, loss {self.stage1_loss}; transfer T "
            + (f"at the start of S (epoch {self.schedule.first_epoch_of('S', self.num_epochs)})"
               if self.transfer_stage1 else "off") + f"; empty-organ fallback '{self.empty_organ_fallback}'")
        if getattr(self, "_organ_box_report", None):
            self.print_to_log_file(self._organ_box_report)

    def _check_dataset_content(self) -> None:
        folder = self.preprocessed_dataset_folder
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"preprocessed data {folder} is missing; run nnUNetv2_plan_and_preprocess first")
        dataset = infer_dataset_class(folder)(folder)
        check_tumour_inside_organ(dataset, dataset.identifiers, self.plans_manager.dataset_name)
        self._organ_box_report = self._organ_box_sizes(dataset)

    def _organ_box_sizes(self, dataset) -> str:
        """How many training cases' organ boxes (+2K) exceed the patch (their box is cut in training)."""
        patch = [int(p) for p in self.configuration_manager.patch_size]
        sizes, names = [], []
        for identifier in dataset.identifiers:
            locations = dataset.load_case(identifier)[3].get("class_locations", {})
            voxels = [np.asarray(locations[c]) for c in (1, 2) if c in locations and len(locations[c])]
            if not voxels:
                continue
            v = np.concatenate(voxels)[:, 1:]
            if len(patch) == 2:  # per slice: the largest in-plane extent over slices
                extent = np.zeros(2, dtype=int)
                for z in np.unique(v[:, 0]):
                    s = v[v[:, 0] == z][:, 1:]
                    extent = np.maximum(extent, s.max(0) - s.min(0) + 1)
                sizes.append(extent.tolist())
            else:
                sizes.append((v.max(0) - v.min(0) + 1).tolist())
            names.append(identifier)
        too_big = boxes_exceeding_patch(sizes, self.crop_margin_voxels, patch)
        text = f"Cascade: organ box + 2K fits the patch {tuple(patch)} in {len(sizes) - len(too_big)} of " \
               f"{len(sizes)} cases"
        if too_big:
            text += f"; larger (box cut in training, shrunk onto stage 2's patch at prediction): " + \
                    ", ".join(names[i] for i in too_big[:20])
        return text

    def _build_loss(self):
        levels = self.cascade_network.stage2.num_focus_levels
        tumour = TumourStageLoss(focus_level_weights(levels, self.focus_weights), window=self.boundary_window)
        self.cascade_loss = CascadeTumorLoss(
            stage1_loss(self.stage1_loss, self.configuration_manager.batch_dice, self.is_ddp), self.seg2_weight,
            self.shared_boundary_weight, PaperNormalisedSharedBoundaryLoss(), tumour)
        return LossWithAuxiliary(self.cascade_loss, lambda: self.network)

    def get_dataloaders(self):
        """nnU-Net's loaders (the shared :func:`build_dataloaders`), with foreground patches placed on the whole organ
        box (OrganCentredDataLoader) and, when ``seed`` is set, workers in a fixed order with fixed seeds."""
        def organ_centred(dataset_tr, initial_patch_size, patch_size, transforms, **common):
            return OrganCentredDataLoader(dataset_tr, self.batch_size, initial_patch_size, patch_size,
                                          self.label_manager, transforms=transforms, organ_labels=(1, 2),
                                          margin=self.crop_margin_voxels, **common)

        mt_train, mt_val = build_dataloaders(self, organ_centred, seed=self.seed)
        _ = next(mt_train)
        _ = next(mt_val)
        return mt_train, mt_val

    # ---------------------------------------------------------------- steps S / I / J
    def apply_cascade_step(self) -> TrainingStep:
        """Sets the step of the current epoch (pure function of the epoch, so it is restored by ``--c``)."""
        self.cascade_step = self.schedule.step_for_epoch(self.current_epoch, self.num_epochs)
        self.cascade_network.set_prior(self.cascade_step.prior_enabled, self.cascade_step.joint)
        self.cascade_network.set_stage2_enabled(self.cascade_step.stage2_trained)
        return self.cascade_step

    def transfer_stage1_encoder(self) -> int:
        """The transfer step T: stage 1's encoder weights into stage 2's encoder; the optimiser's momentum of the
        overwritten parameters is reset. Returns the number of tensors copied."""
        net = self.cascade_network
        copied = transfer_encoder_weights(net.stage1.encoder, net.stage2.encoder)
        for p in net.stage2.encoder.parameters():
            self.optimizer.state.pop(p, None)
        return copied

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        step = self.apply_cascade_step()
        self.print_to_log_file(f"Cascade {step.describe()}")
        if self.transfer_stage1 and self.current_epoch == self.schedule.first_epoch_of("S", self.num_epochs):
            copied = self.transfer_stage1_encoder()
            self.print_to_log_file(f"Cascade transfer T: stage 1's {self.stage1_encoder} encoder initialises stage "
                                   f"2's {self.encoder} encoder ({copied} tensors copied, their momentum reset)")
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
            means = {k: float(np.nanmean([t[k] for t in self._epoch_terms])) if not all(
                np.isnan(t[k]) for t in self._epoch_terms) else float("nan") for k in self._epoch_terms[0]}
            self.print_to_log_file(
                "Cascade loss terms: " + ", ".join(f"L_{k} {v:.4f}" for k, v in means.items()) +
                f"; patches without organ box: {net.num_empty_organ_patches}/{net.num_patches}; patches whose organ "
                f"touches the patch border: {net.num_truncated_organ_patches}/{net.num_patches}")

    def validation_step(self, batch: dict) -> dict:
        self.cascade_network.set_reference_organ(self._reference_organ(batch["target"]))
        try:
            return super().validation_step(batch)
        finally:
            self.cascade_network.set_reference_organ(None)

    def perform_actual_validation(self, save_probabilities: bool = False):
        """nnU-Net's validation, with the cascade predicting whole cases; the per-case lines go to the training log
        and ``validation/cascade_prediction_log.jsonl``."""
        net = self.cascade_network
        net.record_auxiliary = False
        net.set_reference_organ(None)
        original_dataset_class = self.dataset_class or infer_dataset_class(self.preprocessed_dataset_folder)
        self.dataset_class = validation_dataset_declaring_cases(
            original_dataset_class, net, os.path.join(self.output_folder, "validation"), self.print_to_log_file)
        try:
            super().perform_actual_validation(save_probabilities)
        finally:
            self.dataset_class = original_dataset_class
            declare_case(net, None)
            net.record_auxiliary = True


class nnUNetTrainerCascadeTumorDualBranch(nnUNetTrainerCascadeTumor):
    """The cascade with the paper's dual-branch multi-scale encoder in stage 2 (Eq. 1-4)."""
    encoder = "dual_branch"


class nnUNetTrainerCascadeTumorTransfer(nnUNetTrainerCascadeTumor):
    """The cascade with the transfer step T on the plans' encoders: stage 1 alone for the first 20 % of the epochs
    (step P), then its encoder initialises stage 2's, then S / I / J."""
    transfer_stage1 = True
    stage1_pretrain_fraction = 0.2


class nnUNetTrainerCascadeTumorPaper(nnUNetTrainerCascadeTumorTransfer):
    """The paper's cascade: multi-scale U-Net stage 1 (§3.1), dual-branch stage 2 (Eq. 1-4) and the transfer step
    T between them."""
    stage1_encoder = "multi_scale"
    encoder = "dual_branch"


# the small CPU variants moved to nnunetv2_ext.trainers.small_variants (issue 21); old imports keep working
from nnunetv2_ext._moved import moved  # noqa: E402

__getattr__ = moved(__name__, ["nnunetv2_ext.trainers.small_variants"], names=['nnUNetTrainerCascadeTumorTiny', 'nnUNetTrainerCascadeTumorDualBranchTiny'])
