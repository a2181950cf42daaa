"""PNSS / HESS trainers (Huang et al., Quant Imaging Med Surg 2022). The logic is in :mod:`nnunetv2_ext.sampling`.

- ``nnUNetTrainerPNSSHESS``: both, with our defaults (:class:`SamplingParameters`; the paper's L(0.2, 5) counted in
  the paper's epochs, see ``trainers_docs/nnUNetTrainerPNSSHESS.md`` for what differs from the paper and why).
- ``nnUNetTrainerPNSSHESSPaper``: the paper's settings exactly (no far negatives kept, mini epochs on top).
- issue 22's false-positive remedies, by name: ``...FPReplay``, ``...FinalFull``, ``...RFloor``, ``...Far50`` (half
  of the non-oversampled draws from the dropped slices: the default since 2026-12-07) and ``...Far10`` (the default
  before, 0.1, for the evidence made with it).
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


class nnUNetTrainerPNSSHESSFar50(PNSSHESSMixin, nnUNetTrainer):
    """PNSS + HESS with half of the non-oversampled draws from the slices PNSS has dropped (``far_negative_share=0.5``,
    the default since 2026-12-07; named so that the evidence commands that chose it mean the same in every version)."""
    sampling = replace(DEFAULTS, far_negative_share=0.5)


class nnUNetTrainerPNSSHESSFar10(PNSSHESSMixin, nnUNetTrainer):
    """PNSS + HESS with the far-negative share of the default before 2026-12-07 (0.1): more far false positives in
    raw predictions on both phantoms (issue 22); for reproducing the evidence made with it."""
    sampling = replace(DEFAULTS, far_negative_share=0.1)


class nnUNetTrainerPNSS(PNSSHESSMixin, nnUNetTrainer):
    """PNSS only: negative slices far from the organ are dropped gradually, L(0.2, 5)."""
    sampling = replace(DEFAULTS, hess=False)


class nnUNetTrainerHESS(PNSSHESSMixin, nnUNetTrainer):
    """HESS only: hard slices (0.5 < DSC < mean) are replayed after every paper epoch."""
    sampling = replace(DEFAULTS, pnss=False)


# the small CPU variants moved to nnunetv2_ext.trainers.small_variants (issue 21); old imports keep working
from nnunetv2_ext._moved import moved  # noqa: E402

__getattr__ = moved(__name__, ["nnunetv2_ext.trainers.small_variants"], names=['TINY_SCHEDULE', 'nnUNetTrainerPNSSHESSTiny', 'nnUNetTrainerPNSSTiny', 'nnUNetTrainerHESSTiny', 'nnUNetTrainerHESSExactTiny', 'nnUNetTrainerPNSSHESSPassTiny', 'DemoTrainingMixin', 'DEMO_SCHEDULE', 'nnUNetTrainerDemo', 'nnUNetTrainerPNSSHESSDemo', 'nnUNetTrainerPNSSDemo', 'nnUNetTrainerHESSDemo', 'nnUNetTrainerPNSSHESSPaperDemo', 'nnUNetTrainerPNSSHESSFPReplayDemo', 'nnUNetTrainerPNSSHESSFinalFullDemo', 'nnUNetTrainerPNSSHESSRFloorDemo'])
