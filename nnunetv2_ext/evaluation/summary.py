"""Summary statistics of per-case metric values: mean ± std [min, max], median, worst cases, bootstrap intervals,
paired comparison of methods. Pure numpy/scipy; NaN values (undefined metrics) are counted, never averaged in."""
import math
from typing import Dict, List, Optional, Sequence

import numpy as np
from scipy import stats

from nnunetv2_ext.evaluation.metrics import RANKED_METRICS, badness

DEFAULT_WORST_FRACTION = 0.1
DEFAULT_N_BOOTSTRAP = 2000


def _finite(values: Sequence[float]) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    return values[~np.isnan(values)]


def worst_fraction_mean(values: Sequence[float], metric: str, fraction: float = DEFAULT_WORST_FRACTION,
                        axis: int = -1) -> np.ndarray:
    """Mean of the worst ``ceil(fraction * n)`` values (at least one) along ``axis``; "worst" follows the metric's
    direction (lowest DSC, highest HD95, largest |volume difference|). Values must not contain NaN."""
    values = np.moveaxis(np.asarray(values, dtype=float), axis, -1)
    k = max(1, math.ceil(fraction * values.shape[-1]))
    order = np.argsort(-badness(metric, values), axis=-1, kind="stable")[..., :k]
    return np.take_along_axis(values, order, axis=-1).mean(axis=-1)


def bootstrap_interval(statistic, *samples: np.ndarray, n_resamples: int = DEFAULT_N_BOOTSTRAP,
                       confidence: float = 0.95, seed: int = 0) -> List[float]:
    """Percentile bootstrap interval of ``statistic(*samples, axis)`` with ``scipy.stats.bootstrap`` (cases
    resampled together when there are several paired samples). [nan, nan] for fewer than 2 cases."""
    if samples[0].size < 2:
        return [float("nan"), float("nan")]
    if np.all(samples[0] == samples[0][0]) and len(samples) == 1:  # no spread: scipy warns; the interval is a point
        value = float(statistic(samples[0][None], axis=-1)[0])
        return [value, value]
    res = stats.bootstrap(samples, statistic, n_resamples=n_resamples, confidence_level=confidence,
                          method="percentile", paired=len(samples) > 1, vectorized=True,
                          rng=np.random.default_rng(seed))
    return [float(res.confidence_interval.low), float(res.confidence_interval.high)]


def describe(values: Sequence[float], cases: Sequence[str], metric: str, worst_k: int = 5,
             worst_fraction: float = DEFAULT_WORST_FRACTION, missed: Optional[Sequence[bool]] = None) -> Dict:
    """mean, std (sample, ddof=1), min, max, median over the defined values; ``n_undefined`` NaN cases (listed);
    the ``worst_k`` worst cases by name; the mean of the worst ``worst_fraction`` of cases.

    ``missed`` (per case, optional): structures the prediction missed entirely. They are counted (``n_missed``,
    ``missed_cases``) and, where their value is undefined (HD95/ASSD without a penalty), head ``worst_cases`` with
    the value None, so that a missed organ never disappears from the worst-case list."""
    values = np.asarray(values, dtype=float)
    defined = ~np.isnan(values)
    finite = values[defined]
    missed = np.zeros(len(values), dtype=bool) if missed is None else np.asarray(missed, dtype=bool)
    missed_undefined = [c for c, m, d in zip(cases, missed, defined) if m and not d]
    result = {"n": int(finite.size), "n_undefined": int((~defined).sum()),
              "undefined_cases": [c for c, d in zip(cases, defined) if not d],
              "n_missed": int(missed.sum()), "missed_cases": [c for c, m in zip(cases, missed) if m]}
    if finite.size == 0:
        result.update({k: float("nan") for k in ("mean", "std", "min", "max", "median", "worst_fraction_mean")})
        result["worst_cases"] = [[c, None] for c in missed_undefined] if metric in RANKED_METRICS else []
        return result
    result.update({
        "mean": float(finite.mean()),
        "std": float(finite.std(ddof=1)) if finite.size > 1 else 0.0,
        "min": float(finite.min()),
        "max": float(finite.max()),
        "median": float(np.median(finite)),
    })
    if metric in RANKED_METRICS:
        defined_cases = [c for c, d in zip(cases, defined) if d]
        order = np.argsort(-badness(metric, finite), kind="stable")[:max(0, worst_k - len(missed_undefined))]
        result["worst_cases"] = ([[c, None] for c in missed_undefined]
                                 + [[defined_cases[i], float(finite[i])] for i in order])
        result["worst_fraction_mean"] = float(worst_fraction_mean(finite, metric, worst_fraction))
    return result


def compare_paired(baseline: Sequence[float], other: Sequence[float], cases: Sequence[str], metric: str,
                   worst_fraction: float = DEFAULT_WORST_FRACTION, n_resamples: int = DEFAULT_N_BOOTSTRAP,
                   seed: int = 0, top_k: int = 5) -> Dict:
    """Paired per-case comparison of ``other`` against ``baseline`` (same case order).

    diff = other - baseline per case. A case "improved" when the metric moved in its good direction (higher DSC,
    lower HD95, smaller |volume difference|). Cases where either value is NaN are left out and listed.
    Returns the mean difference with its bootstrap 95 % interval, the difference of the worst-fraction means with
    its (paired) bootstrap interval, counts of improved / worse / equal cases, the ``top_k`` largest improvements
    and worsenings by case, and the Wilcoxon signed-rank p-value (two-sided; NaN when all differences are 0)."""
    a, b = np.asarray(baseline, dtype=float), np.asarray(other, dtype=float)
    both = ~(np.isnan(a) | np.isnan(b))
    a, b = a[both], b[both]
    used_cases = [c for c, ok in zip(cases, both) if ok]
    diff = b - a
    gain = badness(metric, a) - badness(metric, b)  # > 0: other is better on this case
    eps = 1e-12
    order = np.argsort(-gain, kind="stable")
    result = {
        "n_paired": int(diff.size),
        "unpaired_cases": [c for c, ok in zip(cases, both) if not ok],
        "mean_diff": float(diff.mean()) if diff.size else float("nan"),
        "mean_diff_ci95": bootstrap_interval(lambda d, axis: d.mean(axis=axis), diff, n_resamples=n_resamples,
                                             seed=seed),
        "n_improved": int((gain > eps).sum()),
        "n_worse": int((gain < -eps).sum()),
        "n_equal": int((np.abs(gain) <= eps).sum()),
        "most_improved": [[used_cases[i], float(diff[i])] for i in order[:top_k] if gain[i] > eps],
        "most_worsened": [[used_cases[i], float(diff[i])] for i in order[::-1][:top_k] if gain[i] < -eps],
    }
    if metric in RANKED_METRICS:
        worst_a, worst_b = (float(worst_fraction_mean(x, metric, worst_fraction)) if x.size else float("nan")
                            for x in (a, b))
        result["worst_fraction_mean_diff"] = worst_b - worst_a
        result["worst_fraction_mean_diff_ci95"] = bootstrap_interval(
            lambda x, y, axis: (worst_fraction_mean(y, metric, worst_fraction, axis)
                                - worst_fraction_mean(x, metric, worst_fraction, axis)),
            a, b, n_resamples=n_resamples, seed=seed)
    nonzero = np.abs(diff) > eps
    result["wilcoxon_p"] = float(stats.wilcoxon(diff[nonzero]).pvalue) if nonzero.sum() >= 1 else float("nan")
    return result


def method_intervals(values: Sequence[float], metric: str, worst_fraction: float = DEFAULT_WORST_FRACTION,
                     n_resamples: int = DEFAULT_N_BOOTSTRAP, seed: int = 0) -> Dict:
    """Bootstrap 95 % intervals of one method's mean and of its worst-fraction mean (NaN cases left out)."""
    finite = _finite(values)
    result = {"mean_ci95": bootstrap_interval(lambda x, axis: x.mean(axis=axis), finite, n_resamples=n_resamples,
                                              seed=seed)}
    if metric in RANKED_METRICS:
        result["worst_fraction_mean_ci95"] = bootstrap_interval(
            lambda x, axis: worst_fraction_mean(x, metric, worst_fraction, axis), finite, n_resamples=n_resamples,
            seed=seed)
    return result
