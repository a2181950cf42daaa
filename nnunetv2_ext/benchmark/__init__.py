"""Seeded, repeated comparisons of trainers at equal budget through nnU-Net's own commands (``nnUNetv2_ext_benchmark``).

- :mod:`~nnunetv2_ext.benchmark.budget`: any trainer at a fixed budget and seed, by name.
- :mod:`~nnunetv2_ext.benchmark.splits`: cross-validation folds by patient (or any grouping).
- :mod:`~nnunetv2_ext.benchmark.runs`: the runs (trainer x fold x seed), each an independent set of nnU-Net commands.
- :mod:`~nnunetv2_ext.benchmark.stats`: the hierarchical bootstrap over cases and seeds.
- :mod:`~nnunetv2_ext.benchmark.report`: the report.
"""
