"""The benchmark report: per trainer, over seeds, raw and after nnU-Net's postprocessing.

Per trainer: mean ± seed SD of the mean DSC, of the worst-10 % DSC and of the minimum; precision (empty predictions
counted as such), recall, HD95 (a missed organ counted at the image diagonal), NSD, connected components per case;
training seconds per iteration and prediction time relative to the baseline of the same benchmark; then the paired
difference to the baseline of the mean and of the worst-10 % DSC with hierarchical bootstrap intervals over cases and
seeds (:mod:`~nnunetv2_ext.benchmark.stats`). Runs that failed are listed, never silently left out.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional

import numpy as np

from nnunetv2_ext.benchmark.budget import kept_epochs
from nnunetv2_ext.benchmark.runs import (BenchmarkConfig, WorkFolder, epoch_kind, plan_runs,
                                         prediction_folder)
from nnunetv2_ext.benchmark.stats import (mean_statistic, min_statistic, paired_delta, per_seed, seed_text,
                                          worst_statistic)

METRICS = ("DSC", "precision", "recall", "HD95", "NSD")
HD_PENALTY = "diagonal"


def _reference_folder(cfg: BenchmarkConfig) -> str:
    if cfg.test == "imagesTs":
        return os.path.join(os.environ["nnUNet_raw"], cfg.dataset, "labelsTs")
    return os.path.join(os.environ["nnUNet_preprocessed"], cfg.dataset, "gt_segmentations")


#: per-case component counts (``evaluation.components``): all components, false-positive ones (not touching the
#: reference), their voxels, and the false-positive components by slice distance from the reference's slab
COMPONENT_METRICS = ("components", "fp_components", "fp_voxels", "fp_d0", "fp_d1_2", "fp_d3_5", "fp_d6plus")


def _label_mask(seg: np.ndarray, value) -> np.ndarray:
    """The voxels of a dataset.json label (int) or region (list of ints) in a label map."""
    return np.isin(seg, np.atleast_1d(value))


def component_metrics(folder: str, ref: str, dataset_json: dict, label: Optional[str] = None
                      ) -> Dict[str, Dict[str, float]]:
    """case -> :data:`COMPONENT_METRICS` of the predictions in ``folder`` against the references in ``ref``: of the
    whole foreground, or with ``label`` (a dataset.json label / region name) of that label's voxels."""
    from nnunetv2_ext.evaluation.components import components, false_positive_summary
    from nnunetv2_ext.evaluation.io import files_by_case, read_segmentation, reader_class
    ending = dataset_json["file_ending"]
    files = files_by_case(folder, ending)
    refs = files_by_case(ref, ending)
    if not files:
        return {}
    reader = reader_class(dataset_json, ending, next(iter(files.values())))()
    out = {}
    for case, f in files.items():
        seg, _ = read_segmentation(reader, case, f, "prediction")
        ref_seg = read_segmentation(reader, case, refs[case], "reference")[0] if case in refs else None
        if label is not None:
            value = dataset_json["labels"][label]
            seg = _label_mask(seg, value)
            ref_seg = None if ref_seg is None else _label_mask(ref_seg, value)
        s = false_positive_summary({case: components(seg, ref_seg)})  # one case: the per-case counts
        bins = s["fp_by_slice_distance"]
        out[case] = {"components": s["components_per_case"], "fp_components": s["fp_components_per_case"],
                     "fp_voxels": s["fp_voxels_per_case"], "fp_d0": bins["0"], "fp_d1_2": bins["1-2"],
                     "fp_d3_5": bins["3-5"], "fp_d6plus": bins[">5"]}
    return out


def evaluate_folder(folder: str, ref: str, dataset_json_file: str, num_processes: int = 1,
                    label: Optional[str] = None) -> dict:
    """Per-case metrics of ``label`` (a dataset.json label / region name; None: the first label), cached in
    ``folder/.benchmark_metrics.json`` (``.benchmark_metrics_<label>.json`` for a named label)."""
    cache = os.path.join(folder, ".benchmark_metrics.json" if label is None else f".benchmark_metrics_{label}.json")
    with open(dataset_json_file, encoding="utf-8") as f:
        djson = json.load(f)
    out = None
    if os.path.isfile(cache):
        with open(cache, encoding="utf-8") as f:
            out = json.load(f)
        if all(k in v for v in out["per_case"].values() for k in COMPONENT_METRICS):
            return out
    if out is None:
        from nnunetv2_ext.evaluation import evaluate_folders
        result = evaluate_folders(ref, folder, djson, num_processes=num_processes, progress=False,
                                  hd_penalty=HD_PENALTY)
        chosen = result.label(label) if label is not None else result.labels[0]
        out = {"label": chosen.name,
               "per_case": {c: {m: float(result.values(m, chosen.name, cases=[c])[0]) for m in METRICS}
                            for c in result.cases}}
    # a cache from before the false-positive counts: add them while the predictions are there, else mark them unknown
    comps = component_metrics(folder, ref, djson, label) if os.path.isdir(folder) else {}
    for c, values in out["per_case"].items():
        values.update({k: comps[c][k] if c in comps else float("nan") for k in COMPONENT_METRICS})
    with open(cache, "w", encoding="utf-8") as f:
        json.dump(out, f)
    return out


def collect_matrices(cfg: BenchmarkConfig, work: WorkFolder, kind: str, dataset_json_file: str,
                     num_processes: int = 1) -> Dict[str, Dict[str, np.ndarray]]:
    """{trainer: {metric: (seeds, cases) array, "_seeds": seeds, "_cases": cases}} over the trainer's complete
    seeds (every fold done); a case predicted by several folds' models (held-out set) gets their mean."""
    ref = _reference_folder(cfg)
    done = {(r.trainer, r.seed, r.fold): r for r in plan_runs(cfg) if (work.status(r) or {}).get("state") == "done"}

    def one_seed(trainer: str, seed: int) -> Optional[Dict[str, dict]]:
        """case -> metric -> value (the mean over folds; precision: the list, NaN = empty prediction), or None
        while a fold of this seed is missing."""
        by_case: Dict[str, List[dict]] = {}
        for f in cfg.folds:
            r = done.get((trainer, seed, f))
            folder = None if r is None else prediction_folder(cfg, work, r.name, f, kind)
            if folder is None or not os.path.isdir(folder):
                return None
            for case, values in evaluate_folder(folder, ref, dataset_json_file, num_processes,
                                                cfg.label)["per_case"].items():
                by_case.setdefault(case, []).append(values)
        return {c: {m: [v[m] for v in vs] if m == "precision" else float(np.mean([v[m] for v in vs]))
                    for m in vs[0]} for c, vs in by_case.items()}

    out = {}
    for trainer in cfg.trainers:
        results = {s: one_seed(trainer, s) for s in cfg.seeds}
        results = {s: r for s, r in results.items() if r is not None}
        if not results:
            continue
        cases = sorted(set.intersection(*[set(r) for r in results.values()]))
        mats = {m: np.array([[r[c][m] for c in cases] for r in results.values()], dtype=float)
                for m in METRICS + COMPONENT_METRICS if m != "precision"}
        mats["precision"] = [[v for c in cases for v in r[c]["precision"]] for r in results.values()]
        mats["_seeds"], mats["_cases"] = list(results), cases
        out[trainer] = mats
    return out


def run_times(cfg: BenchmarkConfig, work: WorkFolder) -> Dict[str, Dict[str, float]]:
    """Median seconds per training iteration and mean prediction wall time of each trainer's finished runs."""
    out: Dict[str, Dict[str, List[float]]] = {}
    for r in plan_runs(cfg):
        st = work.status(r) or {}
        if st.get("state") != "done":
            continue
        d = out.setdefault(r.trainer, {"it": [], "pred": []})
        if st.get("seconds_per_iteration"):
            d["it"].append(st["seconds_per_iteration"])
        if st.get("predict_wall_s"):
            d["pred"].append(st["predict_wall_s"])
    return {t: {"it": float(np.median(d["it"])) if d["it"] else float("nan"),
                "pred": float(np.mean(d["pred"])) if d["pred"] else float("nan")} for t, d in out.items()}


def trainer_table(cfg: BenchmarkConfig, mats: Dict[str, Dict[str, np.ndarray]], times: Dict[str, Dict[str, float]],
                  n_bootstrap: int = 2000) -> str:
    base = cfg.baseline_trainer
    rows = ["| trainer | seeds | DSC mean ± seed SD | worst-10 % DSC | min DSC | missed (DSC 0) / case | precision "
            "| recall | HD95 mm | NSD | components / case | s / iteration (× base) | prediction s (× base) | "
            f"Δ mean DSC vs {base} [95 % CI] | Δ worst-10 % [95 % CI] |",
            "|" + "---|" * 15]
    bt = times.get(base, {})
    worst = worst_statistic("DSC")
    for t in cfg.trainers:
        if t not in mats:
            rows.append(f"| {t} | 0 | no complete seed yet |" + " |" * 12)
            continue
        m = mats[t]
        dsc = m["DSC"]
        prec = [np.asarray(p, dtype=float) for p in m["precision"]]
        n_empty = int(sum(np.isnan(p).sum() for p in prec))
        prec_txt = seed_text(np.array([np.nanmean(p) for p in prec])) + (f" ({n_empty} empty)" if n_empty else "")
        hd = per_seed(m["HD95"], mean_statistic)
        tt = times.get(t, {})
        ratio = lambda a, b: f" ({a / b:.2f}×)" if b and b == b and a == a else ""  # noqa: E731
        it_txt = f"{tt.get('it', float('nan')):.3f}{ratio(tt.get('it', float('nan')), bt.get('it'))}"
        pred_txt = f"{tt.get('pred', float('nan')):.0f}{ratio(tt.get('pred', float('nan')), bt.get('pred'))}"
        if t == base or base not in mats:
            delta = dworst = "–"
        else:
            b = mats[base]
            common = [c for c in m["_cases"] if c in set(b["_cases"])]
            ia = [m["_cases"].index(c) for c in common]
            ib = [b["_cases"].index(c) for c in common]
            delta = paired_delta(dsc[:, ia], b["DSC"][:, ib], mean_statistic, n_bootstrap)
            dworst = paired_delta(dsc[:, ia], b["DSC"][:, ib], worst, n_bootstrap)
        rows.append(
            f"| {t} | {len(m['_seeds'])} | {seed_text(per_seed(dsc, mean_statistic))} | "
            f"{seed_text(per_seed(dsc, worst))} | {seed_text(per_seed(dsc, min_statistic))} | "
            f"{seed_text((dsc == 0).sum(axis=1), scale=1, digits=1)} / {dsc.shape[1]} | {prec_txt} | "
            f"{seed_text(per_seed(m['recall'], mean_statistic))} | {seed_text(hd, scale=1)} | "
            f"{seed_text(per_seed(m['NSD'], mean_statistic))} | "
            f"{seed_text(per_seed(m['components'], mean_statistic), scale=1)} | {it_txt} | {pred_txt} | {delta} | "
            f"{dworst} |")
    return "\n".join(rows)


def false_positive_table(cfg: BenchmarkConfig, mats: Dict[str, Dict[str, np.ndarray]]) -> str:
    """Per trainer, means over seeds ± seed SD of the per-case component counts (``COMPONENT_METRICS``)."""
    rows = ["| trainer | components / case | false-positive components / case | cases with one | FP voxels / case "
            "| FP at slice distance 0 | 1-2 | 3-5 | ≥ 6 |", "|" + "---|" * 9]
    for t in cfg.trainers:
        if t not in mats:
            continue
        m = mats[t]
        if np.isnan(m["fp_components"]).all():
            rows.append(f"| {t} | {seed_text(per_seed(m['components'], mean_statistic), scale=1)} | not recorded |"
                        + " |" * 6)
            continue
        cell = lambda k: seed_text(per_seed(m[k], mean_statistic), scale=1, digits=2)  # noqa: E731
        with_fp = seed_text((m["fp_components"] > 0).sum(axis=1), scale=1)
        rows.append(f"| {t} | {cell('components')} | {cell('fp_components')} | {with_fp} / {m['DSC'].shape[1]} | "
                    f"{seed_text(per_seed(m['fp_voxels'], mean_statistic), scale=1, digits=0)} | {cell('fp_d0')} | "
                    f"{cell('fp_d1_2')} | {cell('fp_d3_5')} | {cell('fp_d6plus')} |")
    return "\n".join(rows)


def over_training_table(cfg: BenchmarkConfig, by_epoch: Dict[int, Dict[str, Dict[str, np.ndarray]]]) -> str:
    """Per trainer and kept epoch (``Budget.keep_every``; the last row is the final model): mean DSC, components and
    false-positive components per case (all, and 3 or more slices from the organ), means over seeds."""
    rows = ["| trainer | after epoch | mean DSC | components / case | false-positive components / case | of them ≥ 3 "
            "slices from the organ |", "|" + "---|" * 6]
    for t in cfg.trainers:
        for epochs_done, mats in sorted(by_epoch.items()):
            if t not in mats:
                continue
            m = mats[t]
            cell = lambda k: seed_text(per_seed(m[k], mean_statistic), scale=1, digits=2)  # noqa: E731
            far = per_seed(m["fp_d3_5"] + m["fp_d6plus"], mean_statistic)
            rows.append(f"| {t} | {epochs_done} | {seed_text(per_seed(m['DSC'], mean_statistic))} | "
                        f"{cell('components')} | {cell('fp_components')} | {seed_text(far, scale=1, digits=2)} |")
    return "\n".join(rows)


def per_seed_table(cfg: BenchmarkConfig, mats: Dict[str, Dict[str, np.ndarray]]) -> str:
    rows = ["| trainer | " + " | ".join(f"seed {s}" for s in cfg.seeds) + " |", "|---|" + "---|" * len(cfg.seeds)]
    for t in cfg.trainers:
        if t not in mats:
            continue
        by_seed = dict(zip(mats[t]["_seeds"], per_seed(mats[t]["DSC"], mean_statistic)))
        rows.append(f"| {t} | " + " | ".join(f"{100 * by_seed[s]:.1f}" if s in by_seed else "–" for s in cfg.seeds)
                    + " |")
    return "\n".join(rows)


def failed_runs(cfg: BenchmarkConfig, work: WorkFolder) -> List[str]:
    out = []
    for r in plan_runs(cfg):
        st = work.status(r)
        if st is not None and st.get("state") == "failed":
            first = (st.get("error") or "").strip().splitlines()
            out.append(f"run {r.index} ({r.trainer}, fold {r.fold}, seed {r.seed}): "
                       f"{first[0] if first else 'failed'}; log: {st.get('log')}")
    return out


def write_report(cfg: BenchmarkConfig, work: WorkFolder, folder: str, dataset_json_file: str,
                 command: Optional[str] = None, n_bootstrap: int = 2000, num_processes: int = 1) -> str:
    runs = plan_runs(cfg)
    n_done = sum((work.status(r) or {}).get("state") == "done" for r in runs)
    b = cfg.budget
    parts = [f"# Benchmark: {cfg.dataset}, {cfg.configuration}\n"]
    if command:
        parts.append(f"`{command}`\n")
    parts.append(
        f"Budget of every trainer: {b['epochs']} epochs × {b['iterations']} iterations ({b['epochs'] * b['iterations']} "
        f"iterations), batch {b['batch'] or 'of the plans'}, first-stage features {b['width'] or 'of the plans'}; "
        f"folds {cfg.folds}; seeds {cfg.seeds}; evaluated on "
        f"{'the held-out imagesTs/labelsTs (each fold model predicts every case; per case the mean over folds)' if cfg.test == 'imagesTs' else 'the folds validation cases'}"
        f"; label measured: {cfg.label or 'the first foreground label'}"
        f"; test-time mirroring {'on' if cfg.tta else 'off'}; device {cfg.device}. Runs finished: {n_done} of "
        f"{len(runs)}. Values are means over seeds ± the SD between seeds; Δ: paired by case, 95 % hierarchical "
        f"bootstrap interval over cases and seeds ({n_bootstrap} resamples). HD95 counts a missed organ at the "
        f"image diagonal. Times are medians of the runs' nnU-Net epoch times per iteration and the wall time of "
        f"nnUNetv2_predict, measured in this benchmark (only comparable if nothing else ran).\n")
    times = run_times(cfg, work)
    data = {}
    for kind, title in (("raw", "Raw predictions (what nnUNetv2_predict returns)"),
                        ("pp", "After the postprocessing nnUNetv2_find_best_configuration chose")):
        mats = collect_matrices(cfg, work, kind, dataset_json_file, num_processes)
        parts += [f"## {title}\n", trainer_table(cfg, mats, times, n_bootstrap), "",
                  "Mean DSC per seed:", "", per_seed_table(cfg, mats), "",
                  "Connected components; a false-positive component touches no reference voxel; slice distance: "
                  "slices between it and the reference's slab (0 = in the organ's slices):", "",
                  false_positive_table(cfg, mats), ""]
        data[kind] = {t: {"seeds": m["_seeds"], "cases": m["_cases"],
                          **{k: np.asarray(v).tolist() for k, v in m.items() if not k.startswith("_") and
                             k != "precision"}} for t, m in mats.items()}
    epochs = kept_epochs(cfg.budget_for(1))
    if epochs:
        by_epoch = {e: collect_matrices(cfg, work, epoch_kind(e), dataset_json_file, num_processes) for e in epochs}
        by_epoch[b["epochs"]] = collect_matrices(cfg, work, "raw", dataset_json_file, num_processes)
        parts += ["## Over training (raw predictions of the held-out set with the weights kept every "
                  f"{b['keep_every']} epochs)\n", over_training_table(cfg, by_epoch), ""]
    failed = failed_runs(cfg, work)
    if failed:
        parts += ["## Failed runs\n"] + [f"- {f}" for f in failed] + [""]
    text = "\n".join(parts)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "report.md"), "w", encoding="utf-8") as f:
        f.write(text)
    with open(os.path.join(folder, "report.json"), "w", encoding="utf-8") as f:
        json.dump({"config": cfg.key(), "times": times, "per_case": data, "failed": failed}, f)
    return text
