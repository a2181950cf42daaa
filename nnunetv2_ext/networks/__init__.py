"""Networks built from nnU-Net plans with dynamic-network-architectures blocks.

- :mod:`nnunetv2_ext.networks.cascade_tumour`: the cascade tumour variant (Qiu et al. 2024): tumour stage
  (localisation + focusing modules on the plans' encoder) and the two-stage organ -> tumour network.
"""
