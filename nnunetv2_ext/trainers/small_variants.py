"""Small CPU variants of the trainers: ``...Tiny`` for the tests (seconds per run) and ``...Demo`` for the README demo
and the phantom evidence (minutes; the demo's network and budget). They change the budget and the network width
(:class:`~nnunetv2_ext.trainers.tiny.TinyTrainingMixin`, :class:`DemoTrainingMixin`) and, where a method's schedule
would not fit a few epochs, its schedule; never the method. They live apart from the real trainers (issue 21), so
that a trainer module shows what users run; nnU-Net finds them by name like any trainer of the package.
"""
from dataclasses import replace

import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_ext.nnunet_adapters.seeding import SeededRunMixin
from nnunetv2_ext.sampling.hard_pretrain import HardPretrainParameters
from nnunetv2_ext.losses.schedules import StepUpWeight, SwitchWeight
from nnunetv2_ext.trainers.cascade_trainers import nnUNetTrainerCascadeTumor
from nnunetv2_ext.trainers.coarse_to_fine import (nnUNetTrainerCoarseToFine, nnUNetTrainerCoarseToFineMLL,
                                                   nnUNetTrainerCoarseToFineMLN)
from nnunetv2_ext.trainers.cps import nnUNetTrainerCPS
from nnunetv2_ext.trainers.hard_pretrain import nnUNetTrainerHardPretrain, nnUNetTrainerHardPretrainBaselineMin
from nnunetv2_ext.trainers.loss_trainers import (nnUNetTrainerBoundary, nnUNetTrainerHausdorff, nnUNetTrainerMLL,
                                                 nnUNetTrainerPNSSHESS_MLL, nnUNetTrainerSharedBoundary)
from nnunetv2_ext.trainers.slice_position import nnUNetTrainerSlicePosition
from nnunetv2_ext.trainers.pnss_hess import (DEFAULTS, nnUNetTrainerHESS, nnUNetTrainerPNSS, nnUNetTrainerPNSSHESS,
                                             nnUNetTrainerPNSSHESSFar10, nnUNetTrainerPNSSHESSFar50,
                                             nnUNetTrainerPNSSHESSFinalFull, nnUNetTrainerPNSSHESSFPReplay,
                                             nnUNetTrainerPNSSHESSPaper, nnUNetTrainerPNSSHESSRFloor)
from nnunetv2_ext.trainers.tiny import TinyTrainingMixin

__all__ = ['AblSlice', 'AblCase', 'AblFar0', 'AblFinalFull', 'AblForward', 'AblNnunetEpochs', 'AblPaper', 'nnUNetTrainerTiny', 'nnUNetTrainerPNSSHESSTiny', 'nnUNetTrainerPNSSTiny', 'nnUNetTrainerHESSTiny', 'nnUNetTrainerHESSExactTiny', 'nnUNetTrainerPNSSHESSPassTiny', 'DemoTrainingMixin', 'nnUNetTrainerDemo', 'nnUNetTrainerPNSSHESSDemo', 'nnUNetTrainerPNSSDemo', 'nnUNetTrainerHESSDemo', 'nnUNetTrainerPNSSHESSPaperDemo', 'nnUNetTrainerPNSSHESSFPReplayDemo', 'nnUNetTrainerPNSSHESSFar10Demo', 'nnUNetTrainerPNSSHESSFar30Demo', 'nnUNetTrainerPNSSHESSFar50Demo', 'nnUNetTrainerPNSSHESSFinalFullDemo', 'nnUNetTrainerPNSSHESSRFloorDemo', 'nnUNetTrainerBoundaryTiny', 'nnUNetTrainerHausdorffTiny', 'nnUNetTrainerMLLTiny', 'nnUNetTrainerSharedBoundaryTiny', 'nnUNetTrainerPNSSHESS_MLLTiny', 'nnUNetTrainerHardPretrainTiny', 'nnUNetTrainerHardPretrainBaselineMinTiny', 'nnUNetTrainerHardPretrainDemo', 'nnUNetTrainerHardPretrainBaselineMinDemo', 'nnUNetTrainerCascadeTumorTiny', 'nnUNetTrainerCascadeTumorDualBranchTiny', 'nnUNetTrainerCascadeTumorPaperTiny', 'nnUNetTrainerCoarseToFineTiny', 'nnUNetTrainerCoarseToFineMLNTiny', 'nnUNetTrainerCoarseToFineMLLTiny', 'SmallImageCoarseToFineMixin', 'nnUNetTrainerCoarseToFineK4', 'nnUNetTrainerCoarseToFineK4Coarse1', 'nnUNetTrainerCoarseToFineK4Over33', 'nnUNetTrainerCoarseToFineMLNK4', 'nnUNetTrainerCoarseToFineMLLK4', 'nnUNetTrainerCPSTiny', 'nnUNetTrainerCPSTinySeeded', 'nnUNetTrainerTinySeeded', 'nnUNetTrainerSlicePositionTiny']


# ---- plain nnU-Net -----------------------------------------------------------------------------------
class nnUNetTrainerTiny(TinyTrainingMixin, nnUNetTrainer):
    """Plain nnU-Net, shrunk for CPU tests (the baseline of the tiny variants)."""


# ---- pnss_hess ----------------------------------------------------------------------------------
# ---- tiny variants for the CPU tests: 4 epochs of 10 iterations; r falls 1 -> 0.5 -> 0 per nnU-Net epoch -------------
TINY_SCHEDULE = {"alpha": 0.5, "beta": 1, "epoch_unit": "nnunet_epoch"}


class nnUNetTrainerPNSSHESSTiny(TinyTrainingMixin, nnUNetTrainerPNSSHESS):
    sampling = replace(DEFAULTS, **TINY_SCHEDULE)
    sampling_trace = True


class nnUNetTrainerPNSSTiny(TinyTrainingMixin, nnUNetTrainerPNSS):
    sampling = replace(nnUNetTrainerPNSS.sampling, **TINY_SCHEDULE)
    sampling_trace = True


class nnUNetTrainerHESSTiny(TinyTrainingMixin, nnUNetTrainerHESS):
    sampling = replace(nnUNetTrainerHESS.sampling, epoch_unit="nnunet_epoch", scoring="forward")
    sampling_trace = True


class nnUNetTrainerHESSExactTiny(TinyTrainingMixin, nnUNetTrainerHESS):
    """The paper's scoring: all selected slices scored without augmentation at every HESS round."""
    sampling = replace(nnUNetTrainerHESS.sampling, epoch_unit="nnunet_epoch", scoring="exact")
    sampling_trace = True


class nnUNetTrainerPNSSHESSPassTiny(TinyTrainingMixin, nnUNetTrainerPNSSHESS):
    """The paper's epochs (passes over D^r) at a tiny scale: batch 12, so that r falls within 4 epochs."""
    tiny_batch_size = 12
    sampling = replace(DEFAULTS, alpha=0.5, beta=1)
    sampling_trace = True


# ---- the README demo and the phantom evidence (scripts/pnss_hess_benchmark.sh): same network and budget as plain ---
class DemoTrainingMixin(TinyTrainingMixin):
    """Calibrated on 2 CPU cores to learn the phantom in a few minutes: 12 epochs of 40 iterations, batch 12."""
    tiny_num_epochs = 12
    tiny_iterations_per_epoch = 40
    tiny_val_iterations_per_epoch = 4
    tiny_batch_size = 12
    tiny_feature_divisor = 2
    tiny_max_features = 128


DEMO_SCHEDULE = {"alpha": 0.2, "beta": 1}


"""The demo's 12 epochs are about 15 passes over the phantom's training slices instead of a real run's hundreds, so
L(0.2, 5) is compressed to L(0.2, 1) (in passes): r reaches 0 after 5 passes, about half-way through training."""


class nnUNetTrainerDemo(DemoTrainingMixin, nnUNetTrainer):
    """Baseline of the README demo and the ablation (plain nnU-Net, small network)."""


class nnUNetTrainerPNSSHESSDemo(DemoTrainingMixin, nnUNetTrainerPNSSHESS):
    sampling = replace(nnUNetTrainerPNSSHESS.sampling, **DEMO_SCHEDULE)


class nnUNetTrainerPNSSDemo(DemoTrainingMixin, nnUNetTrainerPNSS):
    sampling = replace(nnUNetTrainerPNSS.sampling, **DEMO_SCHEDULE)


class nnUNetTrainerHESSDemo(DemoTrainingMixin, nnUNetTrainerHESS):
    sampling = replace(nnUNetTrainerHESS.sampling, **DEMO_SCHEDULE)


class nnUNetTrainerPNSSHESSPaperDemo(DemoTrainingMixin, nnUNetTrainerPNSSHESSPaper):
    sampling = replace(nnUNetTrainerPNSSHESSPaper.sampling, **DEMO_SCHEDULE)


class nnUNetTrainerPNSSHESSFPReplayDemo(DemoTrainingMixin, nnUNetTrainerPNSSHESSFPReplay):
    sampling = replace(nnUNetTrainerPNSSHESSFPReplay.sampling, **DEMO_SCHEDULE)


class nnUNetTrainerPNSSHESSFar10Demo(DemoTrainingMixin, nnUNetTrainerPNSSHESSFar10):
    """The demo's PNSS/HESS as it was before 2026-12-07 (far-negative share 0.1): the PNSS/HESS runs of the evidence
    made before that date, under the name ``nnUNetTrainerPNSSHESSDemo``."""
    sampling = replace(nnUNetTrainerPNSSHESSFar10.sampling, **DEMO_SCHEDULE)


class nnUNetTrainerPNSSHESSFar30Demo(DemoTrainingMixin, nnUNetTrainerPNSSHESS):
    """Issue 22's far-negative candidates: the demo's PNSS/HESS with 30 % (``Far10``: 10 %, ``Far50``: 50 %, the
    default) of the non-oversampled draws from the slices PNSS has dropped (at r = 0 on phantom A: 7 % / 20 % / 33 %
    of each batch; plain nnU-Net draws such slices for about half of each batch there)."""
    sampling = replace(nnUNetTrainerPNSSHESS.sampling, far_negative_share=0.3, **DEMO_SCHEDULE)


class nnUNetTrainerPNSSHESSFar50Demo(DemoTrainingMixin, nnUNetTrainerPNSSHESSFar50):
    sampling = replace(nnUNetTrainerPNSSHESSFar50.sampling, **DEMO_SCHEDULE)


class nnUNetTrainerPNSSHESSFinalFullDemo(DemoTrainingMixin, nnUNetTrainerPNSSHESSFinalFull):
    sampling = replace(nnUNetTrainerPNSSHESSFinalFull.sampling, **DEMO_SCHEDULE)


class nnUNetTrainerPNSSHESSRFloorDemo(DemoTrainingMixin, nnUNetTrainerPNSSHESSRFloor):
    sampling = replace(nnUNetTrainerPNSSHESSRFloor.sampling, **DEMO_SCHEDULE)


# ---- the design set of scripts/pnss_hess_benchmark.sh (docs/evidence.md, section 2): the demo's PNSS/HESS with one
# setting changed at a time (its far-negative share 0.5 since 2026-12-07; 0.1 in the unseeded runs before)


class AblSlice(nnUNetTrainerPNSSHESSDemo):
    """Ablation row: the paper's draw: uniform over D^r, no oversampling."""
    sampling = replace(nnUNetTrainerPNSSHESSDemo.sampling, **{'sampling': 'slice'})


class AblCase(nnUNetTrainerPNSSHESSDemo):
    """Ablation row: nnU-Net's case-uniform draw + oversampling, restricted to the slab."""
    sampling = replace(nnUNetTrainerPNSSHESSDemo.sampling, **{'sampling': 'case'})


class AblFar0(nnUNetTrainerPNSSHESSDemo):
    """Ablation row: no far negatives kept (the paper)."""
    sampling = replace(nnUNetTrainerPNSSHESSDemo.sampling, **{'far_negative_share': 0.0})


class AblFinalFull(nnUNetTrainerPNSSHESSDemo):
    """Ablation row: no far negatives; last 20 % at r = 1."""
    sampling = replace(nnUNetTrainerPNSSHESSDemo.sampling, **{'far_negative_share': 0.0, 'final_full_fraction': 0.2})


class AblForward(nnUNetTrainerPNSSHESSDemo):
    """Ablation row: forward scores (age 1 round); agreement with the exact pass logged."""
    sampling = replace(nnUNetTrainerPNSSHESSDemo.sampling, **{'scoring': 'forward', 'compare_scoring': True})


class AblNnunetEpochs(nnUNetTrainerPNSSHESSDemo):
    """Ablation row: L(0.2, 2) in nnU-Net epochs (the old mapping)."""
    sampling = replace(nnUNetTrainerPNSSHESSDemo.sampling, **{'epoch_unit': 'nnunet_epoch', 'beta': 2})


class AblPaper(nnUNetTrainerPNSSHESSPaperDemo):
    """Ablation row: the paper's settings (slice draw, no far negatives, exact scoring), mini epochs on top."""


# ---- loss_trainers ------------------------------------------------------------------------------
class _TinyLossSettings:
    """Tiny runs: 2 epochs x 5 iterations; every term is on from epoch 1, so the tests exercise it."""
    tiny_num_epochs = 2
    tiny_iterations_per_epoch = 5

    boundary_weight = StepUpWeight(increment=0.5, step_fraction=0.5)
    hausdorff_weight = StepUpWeight(increment=0.5, step_fraction=0.5)
    pixelwise_weight = SwitchWeight(switch_fraction=0.5)
    num_points = 256


class nnUNetTrainerBoundaryTiny(_TinyLossSettings, TinyTrainingMixin, nnUNetTrainerBoundary):
    pass


class nnUNetTrainerHausdorffTiny(_TinyLossSettings, TinyTrainingMixin, nnUNetTrainerHausdorff):
    pass


class nnUNetTrainerMLLTiny(_TinyLossSettings, TinyTrainingMixin, nnUNetTrainerMLL):
    pass


class nnUNetTrainerSharedBoundaryTiny(_TinyLossSettings, TinyTrainingMixin, nnUNetTrainerSharedBoundary):
    pass


class nnUNetTrainerPNSSHESS_MLLTiny(_TinyLossSettings, TinyTrainingMixin, nnUNetTrainerPNSSHESS_MLL):
    sampling = nnUNetTrainerPNSSHESSTiny.sampling


# ---- hard_pretrain ------------------------------------------------------------------------------
class nnUNetTrainerHardPretrainTiny(TinyTrainingMixin, nnUNetTrainerHardPretrain):
    """4 epochs (2 per stage); a fixed threshold of 0.99, because a tiny CPU model scores slices 0 or 1."""
    hard_pretrain = HardPretrainParameters(threshold=0.99)
    sampling_trace = True


class nnUNetTrainerHardPretrainBaselineMinTiny(TinyTrainingMixin, nnUNetTrainerHardPretrainBaselineMin):
    """The baseline rule at the tiny scale: the baseline is ``nnUNetTrainerTiny``."""
    hard_pretrain = replace(HardPretrainParameters(), threshold_baseline="nnUNetTrainerTiny")
    sampling_trace = True


class nnUNetTrainerHardPretrainDemo(DemoTrainingMixin, nnUNetTrainerHardPretrain):
    """The README demo's network and budget (ablation row)."""


class nnUNetTrainerHardPretrainBaselineMinDemo(DemoTrainingMixin, nnUNetTrainerHardPretrainBaselineMin):
    """The paper's threshold rule at the demo's network and budget: the baseline is ``nnUNetTrainerDemo`` (under
    ``nnUNetv2_ext_benchmark``: its run of the same budget and seed)."""
    hard_pretrain = replace(HardPretrainParameters(), threshold_baseline="nnUNetTrainerDemo")


# ---- cascade_trainers ---------------------------------------------------------------------------
class nnUNetTrainerCascadeTumorTiny(TinyTrainingMixin, nnUNetTrainerCascadeTumor):
    """The cascade shrunk for CPU tests: 10 epochs of 25 iterations = 1 S, 4 I, 5 J, mostly organ patches, seeded
    (repeatable with workers on)."""
    tiny_num_epochs = 10
    tiny_iterations_per_epoch = 25
    separate_fraction = 0.1
    joint_reference_fraction = 0.4
    foreground_oversampling = 0.75
    seed = 12345


class nnUNetTrainerCascadeTumorDualBranchTiny(nnUNetTrainerCascadeTumorTiny):
    encoder = "dual_branch"


class nnUNetTrainerCascadeTumorPaperTiny(nnUNetTrainerCascadeTumorTiny):
    """The paper's cascade (multi-scale stage 1, dual-branch stage 2, transfer T) shrunk: P 2, S 1, I 4, J 3."""
    stage1_encoder = "multi_scale"
    encoder = "dual_branch"
    transfer_stage1 = True
    stage1_pretrain_fraction = 0.2


# ---- coarse_to_fine -----------------------------------------------------------------------------
class _TinyCoarseToFine(SeededRunMixin):
    """CPU test settings: 10 epochs x 25 iterations = S 1, I 3, J 6 epochs; K = 4 voxels on the 48x48 phantom
    slices (K = 20 would crop the whole slice); T_max 3; no test-time mirroring (the iterative test then runs once per
    slice instead of four times: the end-of-training validation and nnUNetv2_predict of the tests stay short);
    ω1 = 1 instead of the paper's 0.3: in 250 iterations the small coarse stage did not always learn to find the
    organ with 0.3 (then every box of step J came from the reference fallback and the iterative test had nothing to
    refine). Seeded (weights, workers): unseeded, a CI run once never found the organ in its 250 iterations (80 of
    100 step-J boxes per epoch from the fallback), and the end-to-end checks of the fine stage had nothing to check."""
    seed = 2024
    tiny_num_epochs = 10
    coarse_weight = 1.0
    tiny_iterations_per_epoch = 25
    separate_fraction = 0.1
    joint_reference_fraction = 0.3
    crop_margin = 4
    max_iterations = 3
    foreground_oversampling = 0.75

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        settings = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None  # saved in the checkpoint: nnUNetv2_predict follows it
        return settings


class nnUNetTrainerCoarseToFineTiny(_TinyCoarseToFine, TinyTrainingMixin, nnUNetTrainerCoarseToFine):
    pass


class nnUNetTrainerCoarseToFineMLNTiny(_TinyCoarseToFine, TinyTrainingMixin, nnUNetTrainerCoarseToFineMLN):
    mln_num_points = 64
    mln_d_model = 16
    mln_heads = 2
    mln_layers = 1


class nnUNetTrainerCoarseToFineMLLTiny(_TinyCoarseToFine, TinyTrainingMixin, nnUNetTrainerCoarseToFineMLL):
    """The MLL model at the tiny scale: β and the learning-rate restart at epoch 6 of 10 (the paper's 60 %), step J
    from epoch 4 (40 %, as the paper)."""
    mll_num_points = 64


# ---- coarse_to_fine on small images: the phantom benchmark (scripts/coarse_to_fine_benchmark.py) -----------------
class SmallImageCoarseToFineMixin:
    """The coarse-to-fine trainers on 64 x 64 phantom slices, everything else the paper's: crop margin K = 4 voxels
    instead of 20 (K = 20 is for 512 x 512 CT; on a 64 x 64 slice it would crop nearly the whole slice, and the fine
    stage would see what the coarse stage sees), and 256 points for the pixel-wise term instead of 1024 / 2048 (the
    fine crop has a few hundred pixels). The budget comes from ``nnUNetv2_ext_benchmark``."""
    crop_margin = 4


class nnUNetTrainerCoarseToFineK4(SmallImageCoarseToFineMixin, nnUNetTrainerCoarseToFine):
    pass


class nnUNetTrainerCoarseToFineK4Coarse1(nnUNetTrainerCoarseToFineK4):
    """Why does the coarse stage mark organ-free slices (docs/evidence.md, section 4a)? Its loss weight ω1 = 1 instead
    of the paper's 0.3 (one change)."""
    coarse_weight = 1.0


class nnUNetTrainerCoarseToFineK4Over33(nnUNetTrainerCoarseToFineK4):
    """... or nnU-Net's foreground oversampling 0.33 instead of our 0.5, so that the coarse stage sees as many
    organ-free patches as plain nnU-Net does (one change)."""
    foreground_oversampling = 0.33


class nnUNetTrainerCoarseToFineMLNK4(SmallImageCoarseToFineMixin, nnUNetTrainerCoarseToFineMLN):
    mln_num_points = 256


class nnUNetTrainerCoarseToFineMLLK4(SmallImageCoarseToFineMixin, nnUNetTrainerCoarseToFineMLL):
    mll_num_points = 256


# ---- cps ----------------------------------------------------------------------------------------
class nnUNetTrainerCPSTiny(TinyTrainingMixin, nnUNetTrainerCPS):
    """CPS shrunk for CPU tests: TinyTrainingMixin's schedule and widths, a light residual encoder."""
    partner_resenc_blocks = (1, 1, 1, 1, 1, 1, 1, 1)
    unlabelled_preprocessing_processes = 1


class SeededOrganRunMixin(SeededRunMixin):
    """Seeded (7) and trained long enough (6 x 25 iterations, 2/3 organ patches) that a tiny network finds the
    phantom's organ, for tests that need real predictions downstream (mixin first, before a Tiny trainer)."""
    seed = 7
    tiny_num_epochs = 6
    tiny_iterations_per_epoch = 25

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.oversample_foreground_percent = 0.66


class nnUNetTrainerCPSTinySeeded(SeededOrganRunMixin, nnUNetTrainerCPSTiny):
    """CPSTiny as :class:`SeededOrganRunMixin`: the self-training test needs predictions on the unlabelled cases to
    score (with 4 x 10 iterations the CPS pairs of a local run predicted nothing, every consensus score was undefined
    and no pseudo-label was accepted)."""


class nnUNetTrainerTinySeeded(SeededOrganRunMixin, nnUNetTrainerTiny):
    """Plain nnU-Net as :class:`SeededOrganRunMixin` (the reference model of the propagation test)."""


# ---- slice_position -----------------------------------------------------------------------------
class nnUNetTrainerSlicePositionTiny(TinyTrainingMixin, nnUNetTrainerSlicePosition):
    pass
