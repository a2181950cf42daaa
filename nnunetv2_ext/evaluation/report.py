"""Reports of evaluations and comparisons: Markdown tables in the papers' format, JSON, CSV and a PNG plot."""
import csv
import json
import math
import os
from typing import Dict, Mapping, Optional, Sequence, Union

import numpy as np

from nnunetv2_ext.evaluation.evaluate import EvaluationResult
from nnunetv2_ext.evaluation.metrics import METRICS, RANKED_METRICS, badness
from nnunetv2_ext.evaluation.summary import (DEFAULT_N_BOOTSTRAP, DEFAULT_WORST_FRACTION, compare_paired,
                                             method_intervals)
from nnunetv2_ext.figure_style import own_style

#: metrics shown as percentages in tables (the papers report DSC, precision, recall in %)
PERCENT_METRICS = ("DSC", "IoU", "precision", "recall", "specificity", "NSD", "rel_vol_diff")
DEFAULT_TABLE_METRICS = ("DSC", "precision", "recall", "HD95", "NSD")
DEFAULT_PLOT_METRICS = ("DSC", "HD95", "NSD")


def _column_title(metric: str, percent: bool, nsd_tolerance_mm=None) -> str:
    title = metric
    if metric == "NSD" and isinstance(nsd_tolerance_mm, (int, float)):
        title = f"NSD@{nsd_tolerance_mm:g}mm"
    elif metric == "NSD" and nsd_tolerance_mm is not None:
        title = "NSD@per-label tol."
    unit = "%" if percent and metric in PERCENT_METRICS else METRICS[metric][1]
    return f"{title} ({unit})" if unit else title


def check_metrics(metrics: Sequence[str]) -> None:
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; known: {', '.join(METRICS)}")


def _scale(metric: str, percent: bool) -> float:
    return 100.0 if percent and metric in PERCENT_METRICS else 1.0


def format_mean_std_range(stats: Mapping, scale: float = 1.0, decimals: int = 2) -> str:
    """'mean ± std [min, max]' (the PNSS/HESS paper's format), with '(k missed)' for structures the prediction
    missed and '(k undef.)' for other cases whose value is undefined (NaN)."""
    missed_undefined = len(set(stats.get("missed_cases", [])) & set(stats.get("undefined_cases", [])))
    notes = (f" ({missed_undefined} missed)" if missed_undefined else "") + \
        (f" ({stats['n_undefined'] - missed_undefined} undef.)" if stats["n_undefined"] > missed_undefined else "")
    if stats["n"] == 0:
        return f"undefined (n={stats['n_undefined']})" + (f" ({missed_undefined} missed)" if missed_undefined else "")
    f = lambda v: f"{v * scale:.{decimals}f}"
    return f"{f(stats['mean'])} ± {f(stats['std'])} [{f(stats['min'])}, {f(stats['max'])}]" + notes


def _as_dict(results: Union[EvaluationResult, Mapping[str, EvaluationResult]]) -> Mapping[str, EvaluationResult]:
    return {os.path.basename(results.pred_folder): results} if isinstance(results, EvaluationResult) else results


def common_cases(results: Mapping[str, EvaluationResult]) -> list:
    """Cases evaluated for every method (sorted)."""
    sets = [set(r.cases) for r in results.values()]
    return sorted(set.intersection(*sets))


def format_markdown_table(results_by_method: Union[EvaluationResult, Mapping[str, EvaluationResult]],
                          metrics: Sequence[str] = ("DSC", "precision", "recall"), label=None,
                          percent: bool = True, decimals: int = 2) -> str:
    """Markdown table, one row per method (and per label when several are evaluated and ``label`` is None),
    cells 'mean ± std [min, max]' over the cases, as in the PNSS/HESS paper's tables.

    Args:
        results_by_method: {method name: EvaluationResult} (or a single EvaluationResult).
        metrics: metric names (``metrics.METRICS``), one column each.
        label: restrict to one label/region (value, key or name); None = all evaluated labels.
        percent: show DSC, IoU, precision, recall, specificity, NSD as percentages.
        decimals: digits after the decimal point.
    """
    check_metrics(metrics)
    results = _as_dict(results_by_method)
    first = next(iter(results.values()))
    labels = [first.label(label)] if label is not None else list(first.labels)
    tolerance = first.settings.get("nsd_tolerance_mm")
    show_label = len(labels) > 1
    header = ["Method"] + (["Label"] if show_label else []) + ["n"] + [_column_title(m, percent, tolerance)
                                                                       for m in metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, result in results.items():
        for spec in labels:
            cells = [name] + ([spec.name] if show_label else []) + [str(len(result.cases))]
            for m in metrics:
                stats = result.describe(m, spec.key)
                cells.append(format_mean_std_range(stats, _scale(m, percent), decimals))
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def compare_results(results_by_method: Mapping[str, EvaluationResult], baseline: Optional[str] = None,
                    metrics: Sequence[str] = DEFAULT_TABLE_METRICS, worst_fraction: float = DEFAULT_WORST_FRACTION,
                    n_bootstrap: int = DEFAULT_N_BOOTSTRAP, seed: int = 0, worst_k: int = 5) -> Dict:
    """Side-by-side comparison on the cases common to all methods.

    Returns ``{"baseline", "cases", "cases_not_in_all", "worst_fraction", "labels": {label_key: {metric: {
    "methods": {name: describe(...) + bootstrap intervals of the mean and worst-fraction mean},
    "vs_baseline": {name: compare_paired(...)}}}}}``."""
    check_metrics(metrics)
    if not 0 < worst_fraction <= 1:
        raise ValueError(f"worst_fraction must be in (0, 1], got {worst_fraction}")
    if n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be >= 1, got {n_bootstrap}")
    if len(results_by_method) < 2:
        raise ValueError("compare needs at least two methods")
    names = list(results_by_method)
    baseline = names[0] if baseline is None else baseline
    if baseline not in results_by_method:
        raise ValueError(f"baseline {baseline!r} is not one of the methods {names}")
    cases = common_cases(results_by_method)
    if not cases:
        raise ValueError("the methods have no case in common")
    all_cases = sorted(set().union(*(r.cases for r in results_by_method.values())))
    first = results_by_method[baseline]
    report = {"baseline": baseline, "cases": cases, "cases_not_in_all": [c for c in all_cases if c not in cases],
              "worst_fraction": worst_fraction, "n_bootstrap": n_bootstrap, "labels": {}}
    for spec in first.labels:
        per_metric = {}
        for m in metrics:
            base_values = first.values(m, spec.key, cases)
            methods, paired = {}, {}
            for name, result in results_by_method.items():
                values = result.values(m, spec.key, cases)
                methods[name] = {**result.describe(m, spec.key, cases, worst_k, worst_fraction),
                                 **method_intervals(values, m, worst_fraction, n_bootstrap, seed)}
                if name != baseline:
                    paired[name] = compare_paired(base_values, values, cases, m, worst_fraction, n_bootstrap, seed,
                                                  worst_k)
            per_metric[m] = {"methods": methods, "vs_baseline": paired}
        report["labels"][spec.key] = {"name": spec.name, "metrics": per_metric}
    return report


def format_comparison_table(comparison: Mapping, metric: str = "DSC", label_key: Optional[str] = None,
                            percent: bool = True, decimals: int = 2) -> str:
    """Markdown table of the worst-case comparison for one metric: per method the mean and the mean of the worst
    cases with bootstrap 95 % intervals, and against the baseline the paired differences, improved/worse counts
    and the Wilcoxon p-value."""
    label_key = label_key or next(iter(comparison["labels"]))
    if label_key not in comparison["labels"] or metric not in comparison["labels"][label_key]["metrics"]:
        raise ValueError(f"the comparison has no {metric} for label {label_key} (labels "
                         f"{list(comparison['labels'])}, metrics "
                         f"{list(next(iter(comparison['labels'].values()))['metrics'])})")
    entry = comparison["labels"][label_key]["metrics"][metric]
    scale = _scale(metric, percent)
    f = lambda v: "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v * scale:.{decimals}f}"
    ci = lambda pair: f"[{f(pair[0])}, {f(pair[1])}]"
    worst_pct = f"{comparison['worst_fraction'] * 100:g}%"
    title = _column_title(metric, percent)
    header = ["Method", f"mean {title} [95% CI]", f"worst-{worst_pct} mean [95% CI]", "median",
              f"Δ mean vs {comparison['baseline']} [95% CI]", f"Δ worst-{worst_pct} [95% CI]",
              "improved / worse cases", "Wilcoxon p"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, stats in entry["methods"].items():
        cells = [name, f"{f(stats['mean'])} {ci(stats['mean_ci95'])}"]
        cells.append(f"{f(stats['worst_fraction_mean'])} {ci(stats['worst_fraction_mean_ci95'])}"
                     if "worst_fraction_mean_ci95" in stats else "–")
        cells.append(f(stats["median"]))
        if name in entry["vs_baseline"]:
            p = entry["vs_baseline"][name]
            cells += [f"{f(p['mean_diff'])} {ci(p['mean_diff_ci95'])}",
                      f"{f(p.get('worst_fraction_mean_diff'))} {ci(p['worst_fraction_mean_diff_ci95'])}"
                      if "worst_fraction_mean_diff_ci95" in p else "–",
                      f"{p['n_improved']} / {p['n_worse']}",
                      "–" if math.isnan(p["wilcoxon_p"]) else f"{p['wilcoxon_p']:.3g}"]
        else:
            cells += ["(baseline)", "", "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _json_ready(obj):
    if isinstance(obj, dict):
        return {str(k): _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return None if math.isnan(obj) else float(obj)  # JSON has no NaN: undefined -> null
    return obj


def _write_json(path: str, content) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(_json_ready(content), f, indent=2)


def write_per_case_csv(path: str, results: Mapping[str, EvaluationResult]) -> None:
    """One row per method, case and label; columns: the metrics and voxel counts (empty cell = undefined)."""
    first = next(iter(results.values()))
    some_case = first.per_case[first.cases[0]]
    columns = list(next(iter(some_case.values())))
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "case", "label", "label_name"] + columns)
        for name, result in results.items():
            for case in result.cases:
                for spec in result.labels:
                    values = result.per_case[case][spec.key]
                    writer.writerow([name, case, spec.key, spec.name] +
                                    ["" if isinstance(values[c], float) and math.isnan(values[c]) else values[c]
                                     for c in columns])


def _cell(value) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def write_summary_csv(path: str, results: Mapping[str, EvaluationResult], worst_k: int = 5) -> None:
    """One row per method, label and metric: n, n_undefined, mean, std, min, max, median, worst-fraction mean and
    the worst cases ("case=value; ...")."""
    stats_columns = ("n", "n_undefined", "mean", "std", "min", "max", "median", "worst_fraction_mean")
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "label", "label_name", "metric", *stats_columns, "worst_cases"])
        for name, result in results.items():
            for key, per_metric in result.summary(worst_k=worst_k).items():
                for metric, stats in per_metric.items():
                    worst = "; ".join(f"{c}=missed" if v is None else f"{c}={v:.6g}"
                                      for c, v in stats.get("worst_cases", []))
                    writer.writerow([name, key, result.label(key).name, metric,
                                     *(_cell(stats.get(c)) for c in stats_columns), worst])


def write_paired_differences_csv(path: str, results: Mapping[str, EvaluationResult], baseline: str,
                                 cases: Sequence[str], metrics: Sequence[str]) -> None:
    """One row per method (not the baseline), label, metric and case: baseline value, method value, difference
    (method - baseline) and whether the case improved / got worse / stayed equal; rows sorted by label, metric,
    method, then from the most improved to the most worsened case."""
    base = results[baseline]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "label", "metric", "case", "baseline", "value", "diff", "change"])
        for spec in base.labels:
            for metric in metrics:
                a = base.values(metric, spec.key, cases)
                for name, result in results.items():
                    if name == baseline:
                        continue
                    b = result.values(metric, spec.key, cases)
                    gain = badness(metric, a) - badness(metric, b)
                    order = np.argsort(-np.nan_to_num(gain, nan=-np.inf), kind="stable")
                    for i in order:
                        change = ("undefined" if np.isnan(gain[i]) else "improved" if gain[i] > 1e-12
                                  else "worse" if gain[i] < -1e-12 else "equal")
                        writer.writerow([name, spec.key, metric, cases[i], _cell(float(a[i])), _cell(float(b[i])),
                                         _cell(float(b[i] - a[i])), change])


def _evaluation_json(result: EvaluationResult, worst_k: int) -> Dict:
    return {"ref_folder": result.ref_folder, "pred_folder": result.pred_folder, "settings": result.settings,
            "labels": {s.key: s.name for s in result.labels}, "cases": result.cases, "skipped": result.skipped,
            "summary": result.summary(worst_k=worst_k), "per_case": result.per_case}


def write_evaluation_report(result: EvaluationResult, output_folder: str, name: Optional[str] = None,
                            metrics: Sequence[str] = DEFAULT_TABLE_METRICS, worst_k: int = 5) -> Dict[str, str]:
    """Writes summary.json (settings, summary and per-case values), per_case.csv and summary.md into
    ``output_folder``; returns {kind: path}."""
    os.makedirs(output_folder, exist_ok=True)
    name = name or os.path.basename(result.pred_folder)
    paths = {"json": os.path.join(output_folder, "summary.json"), "csv": os.path.join(output_folder, "per_case.csv"),
             "summary_csv": os.path.join(output_folder, "summary.csv"),
             "markdown": os.path.join(output_folder, "summary.md")}
    _write_json(paths["json"], _evaluation_json(result, worst_k))
    write_per_case_csv(paths["csv"], {name: result})
    write_summary_csv(paths["summary_csv"], {name: result}, worst_k)
    with open(paths["markdown"], "w", encoding="utf-8") as f:
        f.write(_markdown_evaluation(result, name, metrics, worst_k))
    return paths


def _markdown_evaluation(result: EvaluationResult, name: str, metrics: Sequence[str], worst_k: int) -> str:
    text = [f"# Evaluation of {name}\n", f"References: `{result.ref_folder}`, predictions: `{result.pred_folder}`, "
            f"{len(result.cases)} cases. Cells: mean ± std [min, max] over the cases.\n",
            format_markdown_table({name: result}, metrics), ""]
    summary = result.summary(metrics=metrics, worst_k=worst_k)
    for spec in result.labels:
        text.append(f"## Worst cases, label {spec.name}\n")
        for m in metrics:
            s = summary[spec.key][m]
            if m in RANKED_METRICS and (s["n"] or s["worst_cases"]):
                worst = ", ".join(f"{c} (missed)" if v is None else f"{c} ({v * _scale(m, True):.2f})"
                                  for c, v in s["worst_cases"])
                median = f"median {s['median'] * _scale(m, True):.2f}; " if s["n"] else ""
                others = [c for c in s["undefined_cases"] if c not in s["missed_cases"]]
                text.append(f"- {m}: {median}worst: {worst}"
                            + (f"; undefined for {len(others)}: {', '.join(others)}" if others else ""))
        text.append("")
    if result.skipped:
        text.append("## Skipped cases\n")
        text += [f"- {c}: {reason}" for c, reason in sorted(result.skipped.items())]
    text.append(_settings_line(result))
    return "\n".join(text) + "\n"


def _settings_line(result: EvaluationResult) -> str:
    """How the values were computed and by which software (also in the JSON's settings)."""
    st = result.settings
    versions = ", ".join(f"{k} {v}" for k, v in st.get("versions", {}).items())
    return (f"\nSettings: NSD {st.get('nsd_method')} weighting, tolerance {st.get('nsd_tolerance_mm')} mm"
            f"{', preset ' + st['nsd_preset'] if st.get('nsd_preset') else ''}; HD95 {st.get('hd95_method')}; "
            f"HD95/ASSD penalty {st.get('hd_penalty')}. Software: {versions}.\n")


@own_style
def plot_comparison(results: Mapping[str, EvaluationResult], path: str, metrics: Sequence[str] = DEFAULT_PLOT_METRICS,
                    label=None, cases: Optional[Sequence[str]] = None, n_labelled: int = 3) -> str:
    """PNG: one panel per metric, a box plot per method with every case as a jittered point; the ``n_labelled``
    worst cases of each method are named. NaN (undefined) values are left out and counted in the axis label."""
    check_metrics(metrics)
    import matplotlib
    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    names = list(results)
    cases = list(cases) if cases is not None else common_cases(results)
    spec = next(iter(results.values())).label(label)
    fig, axes = plt.subplots(len(metrics), 1, figsize=(max(6.0, 1.1 * len(names) + 2), 3.6 * len(metrics)),
                             squeeze=False)
    rng = np.random.default_rng(0)
    for ax, metric in zip(axes[:, 0], metrics):
        scale = _scale(metric, True)
        data, undefined = [], 0
        for i, name in enumerate(names):
            values = results[name].values(metric, spec.key, cases) * scale
            defined = ~np.isnan(values)
            undefined += int((~defined).sum())
            data.append(values[defined])
            x = i + 1 + rng.uniform(-0.15, 0.15, defined.sum())
            ax.scatter(x, values[defined], s=9, alpha=0.6, color="tab:blue", zorder=3)
            defined_cases = [c for c, d in zip(cases, defined) if d]
            worst = np.argsort(-badness(metric, values[defined]), kind="stable")[:n_labelled]
            for j in worst:
                ax.annotate(defined_cases[j], (x[j], values[defined][j]), fontsize=6, color="tab:red",
                            xytext=(3, 0), textcoords="offset points", va="center")
        ax.boxplot(data, showfliers=False, widths=0.5)
        ax.set_xticks(range(1, len(names) + 1), names, rotation=30, ha="right", fontsize=8)
        ylabel = _column_title(metric, True)
        ax.set_ylabel(ylabel + (f"\n({undefined} undefined left out)" if undefined else ""))
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].set_title(f"label {spec.name}: {len(cases)} cases; worst {n_labelled} per method named")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_comparison_report(results: Mapping[str, EvaluationResult], output_folder: str,
                            comparison: Optional[Dict] = None, metrics: Sequence[str] = DEFAULT_TABLE_METRICS,
                            plot_metrics: Sequence[str] = DEFAULT_PLOT_METRICS, **compare_kwargs) -> Dict[str, str]:
    """Writes comparison.json, per_case.csv (all methods), comparison.md (tables) and one PNG per label into
    ``output_folder``; returns {kind: path}."""
    os.makedirs(output_folder, exist_ok=True)
    comparison = comparison or compare_results(results, metrics=metrics, **compare_kwargs)
    cases = comparison["cases"]
    paths = {"json": os.path.join(output_folder, "comparison.json"),
             "csv": os.path.join(output_folder, "per_case.csv"),
             "summary_csv": os.path.join(output_folder, "summary.csv"),
             "differences_csv": os.path.join(output_folder, "paired_differences.csv"),
             "markdown": os.path.join(output_folder, "comparison.md")}
    restricted = {n: _restrict(r, cases) for n, r in results.items()}
    _write_json(paths["json"], {"comparison": comparison, "methods": {
        n: {k: v for k, v in _evaluation_json(r, 5).items() if k != "per_case"} for n, r in results.items()}})
    write_per_case_csv(paths["csv"], results)
    write_summary_csv(paths["summary_csv"], restricted)
    compared_metrics = list(next(iter(comparison["labels"].values()))["metrics"])
    write_paired_differences_csv(paths["differences_csv"], results, comparison["baseline"], cases, compared_metrics)
    first = next(iter(results.values()))
    text = [f"# Comparison of {len(results)} methods on {len(cases)} common cases\n"]
    if comparison["cases_not_in_all"]:
        text.append(f"Cases not evaluated for every method (left out): {', '.join(comparison['cases_not_in_all'])}\n")
    text += ["Cells: mean ± std [min, max] over the cases.\n", format_markdown_table(restricted, metrics), ""]
    for spec in first.labels:
        for m in metrics:
            if m in comparison["labels"][spec.key]["metrics"]:
                direction = "higher" if METRICS[m][0] else "lower" if METRICS[m][0] is False else "closer to 0"
                text += [f"## {m}, label {spec.name}: worst cases and paired differences\n",
                         f"Δ = method − {comparison['baseline']} per case ({direction} is better); worst-"
                         f"{comparison['worst_fraction'] * 100:g}% = mean of the worst "
                         f"{math.ceil(comparison['worst_fraction'] * len(cases))} cases; intervals: bootstrap 95 %.\n",
                         format_comparison_table(comparison, m, spec.key), "",
                         _changed_cases_markdown(comparison["labels"][spec.key]["metrics"][m], m), ""]
        png = os.path.join(output_folder, f"comparison_{spec.name}.png".replace(os.sep, "_"))
        plot_comparison(results, png, [m for m in plot_metrics if m in METRICS], spec.key, cases)
        paths[f"png_{spec.key}"] = png
        text.append(f"![per-case values, label {spec.name}]({os.path.basename(png)})\n")
    text.append(_settings_line(first))
    with open(paths["markdown"], "w", encoding="utf-8") as f:
        f.write("\n".join(text))
    return paths


def _changed_cases_markdown(entry: Mapping, metric: str) -> str:
    """Per method the cases that improved and got worse the most, with the difference."""
    scale = _scale(metric, True)
    f = lambda pairs: ", ".join(f"{c} ({d * scale:+.2f})" for c, d in pairs) or "none"
    return "\n".join(f"- {name}: most improved {f(p['most_improved'])}; most worsened {f(p['most_worsened'])}"
                     for name, p in entry["vs_baseline"].items())


def _restrict(result: EvaluationResult, cases: Sequence[str]) -> EvaluationResult:
    return EvaluationResult(result.ref_folder, result.pred_folder, result.labels, list(cases),
                            {c: result.per_case[c] for c in cases}, result.skipped, result.settings)
