"""Reference slices + mask propagation (Pham et al., FLARE22, §2.2, Fig. 2-4), trainer-free.

- :mod:`~nnunetv2_ext.propagation.memory`: the space-time memory read (STCN's affinity: negative squared Euclidean
  distance between query and memory keys, softmax over the memory, value readout).
- :mod:`~nnunetv2_ext.propagation.network`: :class:`PropagationNet`, a small STCN-style network (key encoder, value
  encoder, memory read, decoder) from explicit dynamic-network-architectures blocks, one binary mask per label.
- :mod:`~nnunetv2_ext.propagation.losses`: OhemCE (bootstrapped cross-entropy) + Lovász hinge.
- :mod:`~nnunetv2_ext.propagation.references`: the reference module's slice choice (k uniform slices, keep the
  largest masks) and the bidirectional propagation plan.
- :mod:`~nnunetv2_ext.propagation.propagate`: propagation of reference masks through a volume.
- :mod:`~nnunetv2_ext.propagation.data`: volume normalisation and training clips from an nnU-Net raw dataset.
- :mod:`~nnunetv2_ext.propagation.cli`: ``nnUNetv2_ext_train_propagation`` and ``nnUNetv2_ext_propagate``.

See ``docs/semi_supervised.md`` (*Reference slices and mask propagation*).
"""
