"""The Table 1 grid of Huang et al. (2022) as named trainers: ``nnUNetTrainerPNSS_a{01,02}_b{1,3,5,7,9}`` and
``nnUNetTrainerPNSSHESS_a..._b...``, i.e. L(alpha, beta) with alpha 0.1 or 0.2 and beta 1-9 paper epochs, everything
else as the base trainer. Written out, one class each, so that they can be found by name in the source;
``tests/test_sampling_logic.py`` checks the file against the grid (``TABLE1_ALPHAS`` x ``TABLE1_BETAS``)."""
from dataclasses import replace

from nnunetv2_ext.trainers.pnss_hess import nnUNetTrainerPNSS, nnUNetTrainerPNSSHESS

TABLE1_ALPHAS = {"a01": 0.1, "a02": 0.2}
TABLE1_BETAS = (1, 3, 5, 7, 9)


class nnUNetTrainerPNSS_a01_b1(nnUNetTrainerPNSS):
    """nnUNetTrainerPNSS with L(alpha=0.1, beta=1) (Table 1 grid point)."""
    sampling = replace(nnUNetTrainerPNSS.sampling, alpha=0.1, beta=1)


class nnUNetTrainerPNSS_a01_b3(nnUNetTrainerPNSS):
    """nnUNetTrainerPNSS with L(alpha=0.1, beta=3) (Table 1 grid point)."""
    sampling = replace(nnUNetTrainerPNSS.sampling, alpha=0.1, beta=3)


class nnUNetTrainerPNSS_a01_b5(nnUNetTrainerPNSS):
    """nnUNetTrainerPNSS with L(alpha=0.1, beta=5) (Table 1 grid point)."""
    sampling = replace(nnUNetTrainerPNSS.sampling, alpha=0.1, beta=5)


class nnUNetTrainerPNSS_a01_b7(nnUNetTrainerPNSS):
    """nnUNetTrainerPNSS with L(alpha=0.1, beta=7) (Table 1 grid point)."""
    sampling = replace(nnUNetTrainerPNSS.sampling, alpha=0.1, beta=7)


class nnUNetTrainerPNSS_a01_b9(nnUNetTrainerPNSS):
    """nnUNetTrainerPNSS with L(alpha=0.1, beta=9) (Table 1 grid point)."""
    sampling = replace(nnUNetTrainerPNSS.sampling, alpha=0.1, beta=9)


class nnUNetTrainerPNSS_a02_b1(nnUNetTrainerPNSS):
    """nnUNetTrainerPNSS with L(alpha=0.2, beta=1) (Table 1 grid point)."""
    sampling = replace(nnUNetTrainerPNSS.sampling, alpha=0.2, beta=1)


class nnUNetTrainerPNSS_a02_b3(nnUNetTrainerPNSS):
    """nnUNetTrainerPNSS with L(alpha=0.2, beta=3) (Table 1 grid point)."""
    sampling = replace(nnUNetTrainerPNSS.sampling, alpha=0.2, beta=3)


class nnUNetTrainerPNSS_a02_b5(nnUNetTrainerPNSS):
    """nnUNetTrainerPNSS with L(alpha=0.2, beta=5) (Table 1 grid point)."""
    sampling = replace(nnUNetTrainerPNSS.sampling, alpha=0.2, beta=5)


class nnUNetTrainerPNSS_a02_b7(nnUNetTrainerPNSS):
    """nnUNetTrainerPNSS with L(alpha=0.2, beta=7) (Table 1 grid point)."""
    sampling = replace(nnUNetTrainerPNSS.sampling, alpha=0.2, beta=7)


class nnUNetTrainerPNSS_a02_b9(nnUNetTrainerPNSS):
    """nnUNetTrainerPNSS with L(alpha=0.2, beta=9) (Table 1 grid point)."""
    sampling = replace(nnUNetTrainerPNSS.sampling, alpha=0.2, beta=9)


class nnUNetTrainerPNSSHESS_a01_b1(nnUNetTrainerPNSSHESS):
    """nnUNetTrainerPNSSHESS with L(alpha=0.1, beta=1) (Table 1 grid point)."""
    sampling = replace(nnUNetTrainerPNSSHESS.sampling, alpha=0.1, beta=1)


class nnUNetTrainerPNSSHESS_a01_b3(nnUNetTrainerPNSSHESS):
    """nnUNetTrainerPNSSHESS with L(alpha=0.1, beta=3) (Table 1 grid point)."""
    sampling = replace(nnUNetTrainerPNSSHESS.sampling, alpha=0.1, beta=3)


class nnUNetTrainerPNSSHESS_a01_b5(nnUNetTrainerPNSSHESS):
    """nnUNetTrainerPNSSHESS with L(alpha=0.1, beta=5) (Table 1 grid point)."""
    sampling = replace(nnUNetTrainerPNSSHESS.sampling, alpha=0.1, beta=5)


class nnUNetTrainerPNSSHESS_a01_b7(nnUNetTrainerPNSSHESS):
    """nnUNetTrainerPNSSHESS with L(alpha=0.1, beta=7) (Table 1 grid point)."""
    sampling = replace(nnUNetTrainerPNSSHESS.sampling, alpha=0.1, beta=7)


class nnUNetTrainerPNSSHESS_a01_b9(nnUNetTrainerPNSSHESS):
    """nnUNetTrainerPNSSHESS with L(alpha=0.1, beta=9) (Table 1 grid point)."""
    sampling = replace(nnUNetTrainerPNSSHESS.sampling, alpha=0.1, beta=9)


class nnUNetTrainerPNSSHESS_a02_b1(nnUNetTrainerPNSSHESS):
    """nnUNetTrainerPNSSHESS with L(alpha=0.2, beta=1) (Table 1 grid point)."""
    sampling = replace(nnUNetTrainerPNSSHESS.sampling, alpha=0.2, beta=1)


class nnUNetTrainerPNSSHESS_a02_b3(nnUNetTrainerPNSSHESS):
    """nnUNetTrainerPNSSHESS with L(alpha=0.2, beta=3) (Table 1 grid point)."""
    sampling = replace(nnUNetTrainerPNSSHESS.sampling, alpha=0.2, beta=3)


class nnUNetTrainerPNSSHESS_a02_b5(nnUNetTrainerPNSSHESS):
    """nnUNetTrainerPNSSHESS with L(alpha=0.2, beta=5) (Table 1 grid point)."""
    sampling = replace(nnUNetTrainerPNSSHESS.sampling, alpha=0.2, beta=5)


class nnUNetTrainerPNSSHESS_a02_b7(nnUNetTrainerPNSSHESS):
    """nnUNetTrainerPNSSHESS with L(alpha=0.2, beta=7) (Table 1 grid point)."""
    sampling = replace(nnUNetTrainerPNSSHESS.sampling, alpha=0.2, beta=7)


class nnUNetTrainerPNSSHESS_a02_b9(nnUNetTrainerPNSSHESS):
    """nnUNetTrainerPNSSHESS with L(alpha=0.2, beta=9) (Table 1 grid point)."""
    sampling = replace(nnUNetTrainerPNSSHESS.sampling, alpha=0.2, beta=9)
