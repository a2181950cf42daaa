"""PNSS / HESS trainers (Huang et al., Quant Imaging Med Surg 2022). The logic is in :mod:`nnunetv2_ext.sampling`.

- ``nnUNetTrainerPNSS``: positive-negative subset selection only.
- ``nnUNetTrainerHESS``: hard-easy subset selection only (all slices stay selected).
- ``nnUNetTrainerPNSSHESS``: both, the paper's full method (alpha=0.2, beta=5).
- ``nnUNetTrainerPNSS_a{01,02}_b{1,3,5,7,9}`` and ``nnUNetTrainerPNSSHESS_a..._b...``: the Table 1 grid
  (a01 = alpha 0.1, a02 = alpha 0.2; b = beta in epochs).
- ``...Tiny`` / ``...Demo``: small CPU variants for tests and the README demo.
"""
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_ext.sampling.trainer_mixin import PNSSHESSMixin
from nnunetv2_ext.trainers.tiny import TinyTrainingMixin


class PNSSMixin(PNSSHESSMixin):
    hess_enabled = False


class HESSMixin(PNSSHESSMixin):
    pnss_enabled = False


class nnUNetTrainerPNSSHESS(PNSSHESSMixin, nnUNetTrainer):
    """PNSS + HESS with the paper's best schedule L(0.2, 5)."""


class nnUNetTrainerPNSS(PNSSMixin, nnUNetTrainer):
    """PNSS only: negative slices far from the organ are dropped gradually, L(0.2, 5)."""


class nnUNetTrainerHESS(HESSMixin, nnUNetTrainer):
    """HESS only: hard slices (0.5 < DSC < mean) are replayed after every epoch."""


TABLE1_ALPHAS = {"a01": 0.1, "a02": 0.2}
TABLE1_BETAS = (1, 3, 5, 7, 9)


def _table1_variants() -> dict:
    variants = {}
    for base in (nnUNetTrainerPNSS, nnUNetTrainerPNSSHESS):
        for a_name, alpha in TABLE1_ALPHAS.items():
            for beta in TABLE1_BETAS:
                name = f"{base.__name__}_{a_name}_b{beta}"
                variants[name] = type(name, (base,), {
                    "pnss_alpha": alpha, "pnss_beta": beta, "__module__": __name__,
                    "__doc__": f"{base.__name__} with L(alpha={alpha}, beta={beta}) (Table 1 grid point)."})
    return variants


globals().update(_table1_variants())


class SmallScheduleMixin:
    """A schedule that reaches r = 0 within the few epochs of the tiny/demo runs."""
    pnss_alpha = 0.5
    pnss_beta = 1


class nnUNetTrainerPNSSHESSTiny(TinyTrainingMixin, SmallScheduleMixin, nnUNetTrainerPNSSHESS):
    sampling_trace = True


class nnUNetTrainerPNSSTiny(TinyTrainingMixin, SmallScheduleMixin, nnUNetTrainerPNSS):
    sampling_trace = True


class nnUNetTrainerHESSTiny(TinyTrainingMixin, nnUNetTrainerHESS):
    sampling_trace = True


class nnUNetTrainerHESSExactTiny(nnUNetTrainerHESSTiny):
    """The paper's scoring: all selected slices scored without augmentation after every epoch."""
    hess_scoring = "exact"


class DemoTrainingMixin(TinyTrainingMixin):
    """The README demo: calibrated on 2 CPU cores to learn the phantom in a few minutes."""
    tiny_num_epochs = 12
    tiny_iterations_per_epoch = 40
    tiny_val_iterations_per_epoch = 4
    tiny_batch_size = 12
    tiny_feature_divisor = 2
    tiny_max_features = 128


class nnUNetTrainerDemo(DemoTrainingMixin, nnUNetTrainer):
    """Baseline of the README demo (plain nnU-Net, small network)."""


class nnUNetTrainerPNSSHESSDemo(DemoTrainingMixin, nnUNetTrainerPNSSHESS):
    """PNSS/HESS in the README demo; L(0.2, 2) so that r reaches 0 at epoch 10 of 12 (the paper's pace, compressed)."""
    pnss_alpha = 0.2
    pnss_beta = 2
