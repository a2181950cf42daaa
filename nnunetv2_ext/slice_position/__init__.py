"""Slice-position encoding (Pham et al., FLARE22 §2.2), trainer-free: the positions (``encoding``), the pair of
transforms that keeps the channel out of nnU-Net's intensity augmentation (``transforms``) and the checks a trainer
runs before training (``checks``). The commands that write the channel are in
``nnunetv2_ext.dataset_conversion.slice_position``; the trainer mixin in ``nnunetv2_ext.trainers.slice_position``."""
