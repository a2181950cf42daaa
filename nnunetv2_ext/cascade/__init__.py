"""The cascade tumour variant (Qiu et al., "A deep learning-based cascade algorithm for pancreatic tumor segmentation",
Front. Oncol. 2024): organ, then tumour on the organ's crop.

- :mod:`~nnunetv2_ext.cascade.blocks`: localisation, focusing and multi-scale blocks, the tumour stage network;
- :mod:`~nnunetv2_ext.cascade.network`: :class:`CascadeTumorNet` (both stages in one module, no I/O);
- :mod:`~nnunetv2_ext.cascade.loss`: :class:`CascadeTumorLoss` (Eq. 10-12, the shared-boundary term).

What it shares with the coarse-to-fine method (boxes, crops, the salient change prior, training steps, ops) is in
:mod:`nnunetv2_ext.two_stage`; its nnU-Net glue in ``trainers/cascade_trainers.py``.
"""
