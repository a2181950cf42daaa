"""Per-epoch PNSS/HESS records: the log line, ``sampling_log.json`` and ``sampling_progress.png`` (paper's Fig. 2)."""
from __future__ import annotations

import json
import os
from typing import List

import numpy as np


def epoch_record(epoch: int, r: float, n_selected: int, n_total: int, hard, mini_iterations: int,
                 selected_dsc: np.ndarray, mini_epoch_loss: float, scoring: str) -> dict:
    q = np.nanpercentile(selected_dsc, [10, 25, 50, 75, 90]).tolist() if np.isfinite(selected_dsc).any() \
        else [None] * 5
    return {
        "epoch": int(epoch), "r": float(r), "n_selected": int(n_selected), "n_total": int(n_total),
        "n_hard": int(len(hard.hard_units)), "n_outliers": int(hard.num_outliers),
        "n_scored": int(hard.num_scored),
        "mean_slice_dsc": None if np.isnan(hard.mean_dsc) else float(hard.mean_dsc),
        "slice_dsc_quantiles_10_25_50_75_90": q,
        "mini_epoch_iterations": int(mini_iterations),
        "mini_epoch_loss": None if mini_iterations == 0 else float(mini_epoch_loss),
        "scoring": scoring,
    }


def log_line(rec: dict) -> str:
    dsc = "n/a" if rec["mean_slice_dsc"] is None else f"{rec['mean_slice_dsc']:.4f}"
    return (f"PNSS/HESS: r={rec['r']:.2f}, selected slices {rec['n_selected']}/{rec['n_total']} "
            f"({100 * rec['n_selected'] / max(rec['n_total'], 1):.1f}%), hard {rec['n_hard']}, "
            f"outliers {rec['n_outliers']}, mean slice DSC {dsc} ({rec['n_scored']} scored, {rec['scoring']}), "
            f"mini-epoch iterations {rec['mini_epoch_iterations']}")


def write_sampling_log(records: List[dict], output_folder: str) -> None:
    tmp = os.path.join(output_folder, "sampling_log.json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(records, f, indent=1)
    os.replace(tmp, os.path.join(output_folder, "sampling_log.json"))


def plot_sampling_progress(records: List[dict], output_folder: str) -> None:
    import matplotlib
    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    if not records:
        return
    ep = [r["epoch"] for r in records]
    fig, ax = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    ax[0].plot(ep, [r["r"] for r in records], "b-o", ms=3)
    ax[0].set_ylabel("PNSS ratio r")
    ax[0].set_ylim(-0.05, 1.05)
    ax[1].plot(ep, [r["n_hard"] for r in records], "r-o", ms=3, label="hard slices")
    ax[1].plot(ep, [r["n_outliers"] for r in records], "k--", label="outliers (DSC <= 0.5)")
    ax[1].plot(ep, [r["n_selected"] for r in records], "g:", label="selected slices")
    ax[1].set_ylabel("slices")
    ax[1].legend(loc="best", fontsize=8)
    q = np.array([[np.nan if v is None else v for v in r["slice_dsc_quantiles_10_25_50_75_90"]] for r in records])
    ax[2].fill_between(ep, q[:, 0], q[:, 4], color="C0", alpha=0.2, label="10-90 %")
    ax[2].fill_between(ep, q[:, 1], q[:, 3], color="C0", alpha=0.4, label="25-75 %")
    ax[2].plot(ep, q[:, 2], "C0-", label="median")
    ax[2].plot(ep, [np.nan if r["mean_slice_dsc"] is None else r["mean_slice_dsc"] for r in records], "k-",
               label="mean (s_mean, Eq. 8)")
    ax[2].axhline(0.5, color="r", lw=0.8, ls="--")
    ax[2].set_ylabel("training slice DSC")
    ax[2].set_xlabel("epoch")
    ax[2].set_ylim(-0.02, 1.02)
    ax[2].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(output_folder, "sampling_progress.png"), dpi=90)
    plt.close(fig)
