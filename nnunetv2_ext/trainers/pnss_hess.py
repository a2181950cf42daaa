"""PNSS / HESS trainers (Huang et al., Quant Imaging Med Surg 2022). The logic is in :mod:`nnunetv2_ext.sampling`.

- ``nnUNetTrainerPNSSHESS``: both, with our defaults (:class:`SamplingParameters`; the paper's L(0.2, 5) counted in
  the paper's epochs, see ``trainers_docs/nnUNetTrainerPNSSHESS.md`` for what differs from the paper and why).
- ``nnUNetTrainerPNSSHESSPaper``: the paper's settings exactly (no far negatives kept, mini epochs on top).
- ``nnUNetTrainerPNSS``: positive-negative subset selection only; ``nnUNetTrainerHESS``: hard-easy subset selection
  only (all slices stay selected).
- the Table 1 grid ``nnUNetTrainerPNSS_a{01,02}_b{1,3,5,7,9}`` / ``nnUNetTrainerPNSSHESS_a..._b...`` is written out
  in :mod:`nnunetv2_ext.trainers.pnss_table1`.
- ``...Tiny`` / ``...Demo``: small CPU variants for tests, the README demo and the ablation.
"""
from dataclasses import replace

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_ext.sampling.parameters import SamplingParameters
from nnunetv2_ext.trainers.sampling_mixin import PNSSHESSMixin
from nnunetv2_ext.trainers.tiny import TinyTrainingMixin

DEFAULTS = SamplingParameters()
PAPER = replace(DEFAULTS, far_negative_share=0.0, final_full_fraction=0.0, r_min=0.0, sampling="slice",
                scoring="exact", budget="extra", epoch_unit="pass")


class nnUNetTrainerPNSSHESS(PNSSHESSMixin, nnUNetTrainer):
    """PNSS + HESS with the defaults of :class:`SamplingParameters`."""
    sampling = DEFAULTS


class nnUNetTrainerPNSSHESSPaper(PNSSHESSMixin, nnUNetTrainer):
    """PNSS + HESS exactly as in the paper: no far negatives, no final full phase, exact scoring, mini epochs extra."""
    sampling = PAPER


class nnUNetTrainerPNSSHESSFPReplay(PNSSHESSMixin, nnUNetTrainer):
    """PNSS + HESS whose HESS rounds also replay every negative slice with a false positive, the slices PNSS dropped
    included (``negatives_with_fp='hard'``, an extension of Eq. 8; issue 22's remedy candidate)."""
    sampling = replace(DEFAULTS, negatives_with_fp="hard")


class nnUNetTrainerPNSSHESSFinalFull(PNSSHESSMixin, nnUNetTrainer):
    """PNSS + HESS whose last quarter of the epochs trains on all slices again (``final_full_fraction=0.25``)."""
    sampling = replace(DEFAULTS, final_full_fraction=0.25)


class nnUNetTrainerPNSSHESSRFloor(PNSSHESSMixin, nnUNetTrainer):
    """PNSS + HESS whose ratio never falls below 0.2 (``r_min=0.2``): a fifth of the far negatives stay in D^r for the
    whole run (issue 22's remedy candidate; the paper's floor is 0)."""
    sampling = replace(DEFAULTS, r_min=0.2)


class nnUNetTrainerPNSS(PNSSHESSMixin, nnUNetTrainer):
    """PNSS only: negative slices far from the organ are dropped gradually, L(0.2, 5)."""
    sampling = replace(DEFAULTS, hess=False)


class nnUNetTrainerHESS(PNSSHESSMixin, nnUNetTrainer):
    """HESS only: hard slices (0.5 < DSC < mean) are replayed after every paper epoch."""
    sampling = replace(DEFAULTS, pnss=False)


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


# ---- the README demo and the ablation (benchmarks/ablation_pnss_hess.py): same network and budget as the baseline --
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


class nnUNetTrainerPNSSHESSFinalFullDemo(DemoTrainingMixin, nnUNetTrainerPNSSHESSFinalFull):
    sampling = replace(nnUNetTrainerPNSSHESSFinalFull.sampling, **DEMO_SCHEDULE)


class nnUNetTrainerPNSSHESSRFloorDemo(DemoTrainingMixin, nnUNetTrainerPNSSHESSRFloor):
    sampling = replace(nnUNetTrainerPNSSHESSRFloor.sampling, **DEMO_SCHEDULE)
