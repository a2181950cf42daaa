"""Comparisons whose arms are not single trainers: a pipeline on top of benchmark runs (k slices + propagation, a
self-training loop), measured like the benchmark's trainers.

An *arm* is one way of producing the held-out predictions, repeated over seeds: a mapping metric -> matrix
``values[seed, case]`` (the benchmark's convention, :mod:`nnunetv2_ext.benchmark.stats`), built from one prediction
folder per seed by :func:`arm_matrices` with the benchmark's own evaluation (same metrics, same cache). The table of
:func:`arms_table` shows each arm's mean over seeds ± seed SD and its paired difference to the baseline arm with the
hierarchical bootstrap over cases and seeds.
"""
from __future__ import annotations

import os
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from nnunetv2_ext.benchmark.report import evaluate_folder
from nnunetv2_ext.benchmark.stats import (mean_statistic, min_statistic, paired_delta, per_seed, seed_text,
                                          worst_statistic)

Arm = Dict[str, np.ndarray]
NNUNET_FOLDERS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
ARM_METRICS = ("DSC", "HD95", "fp_components")


def arm_matrices(folders: Sequence[str], reference: str, dataset_json_file: str, label: Optional[str] = None,
                 num_processes: int = 1) -> Arm:
    """{metric: (seeds, cases)} from one prediction folder per seed, cases in sorted order; every folder must hold
    the same cases."""
    per_seed_cases = [evaluate_folder(f, reference, dataset_json_file, num_processes, label)["per_case"]
                      for f in folders]
    cases = sorted(per_seed_cases[0])
    for folder, pc in zip(folders, per_seed_cases):
        if sorted(pc) != cases:
            raise ValueError(f"{folder} holds other cases than {folders[0]}")
    arm = {m: np.array([[pc[c][m] for c in cases] for pc in per_seed_cases], dtype=float) for m in ARM_METRICS}
    arm["_cases"] = np.array(cases)
    return arm


def arms_table(arms: Mapping[str, Arm], baseline: str, seconds: Optional[Mapping[str, List[float]]] = None,
               n_bootstrap: int = 2000) -> str:
    """Markdown: per arm DSC mean ± seed SD, worst-10 %, min, missed cases, HD95, false-positive components per case,
    median seconds, and the differences of mean and worst-10 % DSC to ``baseline`` (DSC in percent)."""
    worst = worst_statistic("DSC")
    base = arms[baseline]["DSC"]
    rows = ["| arm | seeds | DSC mean ± seed SD | worst-10 % | min | missed (DSC 0) / case | HD95 mm | FP components / "
            f"case | seconds | Δ mean DSC vs {baseline} [95 % CI] | Δ worst-10 % [95 % CI] |", "|" + "---|" * 11]
    for name, arm in arms.items():
        dsc = arm["DSC"]
        if dsc.shape[1] != base.shape[1] or list(arm["_cases"]) != list(arms[baseline]["_cases"]):
            raise ValueError(f"arm {name!r} was measured on other cases than {baseline!r}")
        delta = dworst = "–"
        if name != baseline:
            delta = paired_delta(dsc, base, mean_statistic, n_bootstrap)
            dworst = paired_delta(dsc, base, worst, n_bootstrap)
        time_text = f"{np.median(seconds[name]):.1f}" if seconds and seconds.get(name) else "–"
        rows.append(f"| {name} | {dsc.shape[0]} | {seed_text(per_seed(dsc, mean_statistic))} | "
                    f"{seed_text(per_seed(dsc, worst))} | {seed_text(per_seed(dsc, min_statistic))} | "
                    f"{seed_text((dsc == 0).sum(axis=1), scale=1)} / {dsc.shape[1]} | "
                    f"{seed_text(np.nanmean(arm['HD95'], axis=1), scale=1)} | "
                    f"{seed_text(np.nanmean(arm['fp_components'], axis=1), scale=1, digits=2)} | {time_text} | "
                    f"{delta} | {dworst} |")
    return "\n".join(rows)


def per_seed_table(arms: Mapping[str, Arm], seeds: Sequence[int]) -> str:
    """Markdown: mean DSC (percent) of every arm per seed."""
    rows = ["| arm | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|" + "---|" * len(seeds)]
    for name, arm in arms.items():
        rows.append(f"| {name} | " + " | ".join(f"{100 * v:.1f}" for v in arm["DSC"].mean(axis=1)) + " |")
    return "\n".join(rows)


def use_work_root(root: str) -> Dict[str, str]:
    """An evidence script's own nnU-Net folders: ``root/nnUNet_raw`` etc. created and set in ``os.environ`` (so that
    the commands it runs use them), two augmentation workers unless set; returns them."""
    folders = {k: os.path.join(os.path.abspath(root), k) for k in NNUNET_FOLDERS}
    for folder in folders.values():
        os.makedirs(folder, exist_ok=True)
    os.environ.update(folders)
    os.environ.setdefault("nnUNet_n_proc_DA", "2")
    return folders


def write_report(lines: Sequence[str], path: str) -> None:
    """Prints the markdown ``lines`` and writes them to ``path`` (its folder created)."""
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
