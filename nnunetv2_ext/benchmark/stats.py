"""Statistics over runs repeated with several seeds, evaluated on the same cases.

A trainer's results are a matrix ``values[seed, case]`` (a case predicted by several folds' models of one seed: the
mean over those folds). A statistic of one run (the mean DSC over cases, the mean of the worst 10 % of cases) is
computed per seed; the trainer's value is its mean over seeds, shown with the seed SD.

The difference to the baseline gets a **hierarchical bootstrap** interval: each resample draws the cases with
replacement (the same cases for both trainers: the comparison is paired by case) and, independently for each trainer,
its seeds with replacement; the statistic is computed per resampled seed over the resampled cases and averaged over
the resampled seeds. Both sources of variation, which cases and which training run, are thus in the interval; with
one seed per trainer it reduces to the ordinary paired case bootstrap. (Vectorised numpy; scipy.stats.bootstrap
resamples one level only.)
"""
from __future__ import annotations

from typing import Callable, List, Tuple

import numpy as np

from nnunetv2_ext.evaluation.summary import DEFAULT_WORST_FRACTION, worst_fraction_mean

Statistic = Callable[[np.ndarray], np.ndarray]  # (..., cases) -> (...)


def mean_statistic(values: np.ndarray) -> np.ndarray:
    return np.mean(values, axis=-1)


def worst_statistic(metric: str = "DSC", fraction: float = DEFAULT_WORST_FRACTION) -> Statistic:
    return lambda values: worst_fraction_mean(values, metric, fraction, axis=-1)


def min_statistic(values: np.ndarray) -> np.ndarray:
    return np.min(values, axis=-1)


def per_seed(values: np.ndarray, statistic: Statistic) -> np.ndarray:
    """The statistic of each seed's run over all cases: shape (seeds,)."""
    return statistic(np.asarray(values, dtype=float))


def hierarchical_bootstrap_difference(other: np.ndarray, baseline: np.ndarray, statistic: Statistic,
                                      n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0,
                                      chunk: int = 250) -> Tuple[float, List[float]]:
    """(difference of the seed-averaged statistic, percentile interval), ``other`` minus ``baseline``; both
    (seeds, cases) with the same case order (see the module docstring)."""
    a, b = np.asarray(other, dtype=float), np.asarray(baseline, dtype=float)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected (seeds, cases) matrices over the same cases, got {a.shape} and {b.shape}")
    point = float(statistic(a).mean() - statistic(b).mean())
    n_cases = a.shape[1]
    if n_cases < 2:
        return point, [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    diffs = []
    for start in range(0, n_resamples, chunk):
        n = min(chunk, n_resamples - start)
        cases = rng.integers(0, n_cases, size=(n, n_cases))
        seeds_a = rng.integers(0, a.shape[0], size=(n, a.shape[0]))
        seeds_b = rng.integers(0, b.shape[0], size=(n, b.shape[0]))
        # (n, seeds, cases): seed rows drawn per resample, then the resample's cases
        ra = a[seeds_a][np.arange(n)[:, None, None], np.arange(a.shape[0])[None, :, None], cases[:, None, :]]
        rb = b[seeds_b][np.arange(n)[:, None, None], np.arange(b.shape[0])[None, :, None], cases[:, None, :]]
        diffs.append(statistic(ra).mean(axis=1) - statistic(rb).mean(axis=1))
    d = np.concatenate(diffs)
    alpha = (1 - confidence) / 2
    return point, [float(np.quantile(d, alpha)), float(np.quantile(d, 1 - alpha))]


def seed_text(values: np.ndarray, scale: float = 100.0, digits: int = 1) -> str:
    """``mean ± SD`` over seeds of per-seed ``values`` (times ``scale``; no SD for a single seed)."""
    v = np.asarray(values, dtype=float) * scale
    sd = f" ± {v.std(ddof=1):.{digits}f}" if v.size > 1 else ""
    return f"{v.mean():.{digits}f}{sd}"


def paired_delta(values: np.ndarray, baseline: np.ndarray, statistic: Statistic, n_bootstrap: int = 2000) -> str:
    """``+d [lo, hi]`` in percent points: :func:`hierarchical_bootstrap_difference` of ``values`` minus
    ``baseline`` (both (seeds, cases) over the same cases) with its 95 % interval."""
    d, ci = hierarchical_bootstrap_difference(values, baseline, statistic, n_bootstrap)
    return f"{100 * d:+.1f} [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]"
