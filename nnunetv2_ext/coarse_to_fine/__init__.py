"""Coarse-to-fine segmentation with the saliency transformation (Liu, Duan, Zeng 2021, after RSTN) and the
multi-level structural network (MLN).

- :mod:`~nnunetv2_ext.coarse_to_fine.network`: :class:`CoarseToFineNet` (coarse stage, F_S, fine stage in one module);
- :mod:`~nnunetv2_ext.coarse_to_fine.mln`: the MLN fine stage (region, boundary and pixel branches, Eq. 12);
- :mod:`~nnunetv2_ext.coarse_to_fine.loss`: :class:`CoarseToFineLoss` (Eq. 13) and :class:`MLNLossWeights`;
- :mod:`~nnunetv2_ext.coarse_to_fine.iterative`: the iterative test (Algorithm 1) and its log.

What it shares with the cascade (boxes, crops, the saliency prior, training steps, ops) is in
:mod:`nnunetv2_ext.two_stage`; its nnU-Net glue in ``trainers/coarse_to_fine.py``.
"""
