#!/usr/bin/env python
"""Speed of the consensus score (Eq. 1, issue 10): one 512 x 512 x 300 case, M = 5 model label maps.

Measures, side by side in one run (best of ``--repeats``, single thread):

- ``consensus_score`` (vectorised: foreground box, class boxes, per-slice counts) for a pancreas-like case (one small
  organ, the models' masks shifted by a voxel each) and a FLARE-like case (13 organs of various sizes);
- the straightforward implementation of Eq. 1 (soft vote over one-hot masks, then a loop over models, slices and
  classes), the reference for the ratio; it takes seconds, skip it with ``--no-naive``.

Target (issue 10): well under a second per case. Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_consensus.py [--repeats 3] [--shape 300 512 512] [--models 5]
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def make_case(shape, num_models: int, num_organs: int, seed: int = 0) -> np.ndarray:
    """(M, z, y, x) uint8 label maps: ellipsoid organs, each model's copy shifted/grown by up to 2 voxels."""
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    zz, yy, xx = np.ogrid[:nz, :ny, :nx]
    maps = np.zeros((num_models,) + tuple(shape), np.uint8)
    organs = []
    for c in range(1, num_organs + 1):
        big = c == 1 and num_organs > 1  # a liver-sized organ in the multi-organ case
        radii = np.array([nz * 0.2, ny * 0.15, nx * 0.12]) if big else \
            np.array([nz * 0.06, ny * 0.03, nx * 0.05]) * rng.uniform(0.6, 1.6, 3)
        centre = np.array([nz, ny, nx]) * rng.uniform(0.3, 0.7, 3)
        organs.append((centre, radii))
    for m in range(num_models):
        for c, (centre, radii) in enumerate(organs, start=1):
            cz, cy, cx = centre + rng.integers(-2, 3, 3)
            rz, ry, rx = radii + rng.uniform(-1, 1, 3)
            maps[m][((zz - cz) / rz) ** 2 + ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = c
    return maps


def naive_score(maps: np.ndarray, labels) -> float:
    """Eq. 1 written out: one-hot soft vote (ties to foreground), then DSC per model, slice and class."""
    num_models = maps.shape[0]
    votes = np.stack([(maps == c).sum(0) for c in [0, *labels]])
    votes[0] = 2 * votes[0] - 1  # background loses ties
    votes[1:] *= 2
    averaged = np.array([0, *labels])[np.argmax(votes, axis=0)]
    class_scores = []
    for c in labels:
        values = []
        for m in range(num_models):
            for k in range(maps.shape[1]):
                p, a = maps[m, k] == c, averaged[k] == c
                denominator = p.sum() + a.sum()
                if denominator:
                    values.append(2 * (p & a).sum() / denominator)
        if values:
            class_scores.append(np.mean(values))
    return float(np.mean(class_scores))


def best_time(fn, repeats: int):
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def main(argv=None) -> None:
    import torch
    torch.set_num_threads(1)
    from nnunetv2_ext.semisupervised.consensus import consensus_score
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", type=int, nargs=3, default=(300, 512, 512), metavar=("Z", "Y", "X"))
    p.add_argument("--models", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-naive", action="store_true", help="skip the slow reference implementation")
    a = p.parse_args(argv)
    print(f"case {tuple(a.shape)}, M = {a.models} models, best of {a.repeats}")
    print("| case | consensus_score (s) | straightforward Eq. 1 (s) | speed-up | slice score | volume score |")
    print("|---|---|---|---|---|---|")
    for name, organs in (("pancreas-like (1 organ)", 1), ("FLARE-like (13 organs)", 13)):
        maps = make_case(a.shape, a.models, organs)
        labels = list(range(1, organs + 1))
        t_fast, result = best_time(lambda: consensus_score(maps, labels, "slice"), a.repeats)
        volume = consensus_score(maps, labels, "volume").score
        if a.no_naive:
            naive_cell, ratio = "-", "-"
        else:
            t_naive, reference = best_time(lambda: naive_score(maps, labels), 1)
            assert abs(reference - result.score) < 1e-9, (reference, result.score)
            naive_cell, ratio = f"{t_naive:.2f}", f"{t_naive / t_fast:.0f}x"
        print(f"| {name} | {t_fast:.3f} | {naive_cell} | {ratio} | {result.score:.4f} | {volume:.4f} |")


if __name__ == "__main__":
    main()
