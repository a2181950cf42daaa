"""Per-epoch PNSS/HESS records: the log line, ``sampling_log.json`` and ``sampling_progress.png`` (paper's Fig. 2).

One record per nnU-Net epoch. Fields: ``epoch``, ``r``, ``paper_epoch`` (the paper's epoch p(e) that set r),
``passes`` (passes over D^r completed at the end of the epoch), ``n_selected`` (|D^r|), ``n_total``,
``main_iterations``, ``mini_epoch_iterations``, ``hess_round``; for epochs with a HESS round also ``n_hard``,
``n_outliers``, ``n_scored``, ``mean_slice_dsc`` (s_mean of Eq. 8), ``slice_dsc_quantiles_10_25_50_75_90``,
``mini_epoch_loss`` and, with ``compare_scoring``, ``agreement`` (forward vs exact scores); otherwise these are null.
``outlier_threshold``, ``scoring`` and ``far_negative_share`` repeat the settings so that the file stands alone.
"""
from __future__ import annotations

import json
import os
from typing import List, Optional

import numpy as np

from nnunetv2_ext.figure_style import own_style


def epoch_record(epoch: int, r: float, paper_epoch: int, passes: float, n_selected: int, n_total: int,
                 main_iterations: int, params, hard=None, selected_dsc: Optional[np.ndarray] = None,
                 mini_iterations: int = 0, mini_epoch_loss: Optional[float] = None,
                 agreement: Optional[dict] = None) -> dict:
    rec = {
        "epoch": int(epoch), "r": float(r), "paper_epoch": int(paper_epoch), "passes": round(float(passes), 4),
        "n_selected": int(n_selected), "n_total": int(n_total), "main_iterations": int(main_iterations),
        "mini_epoch_iterations": int(mini_iterations), "hess_round": hard is not None,
        "n_hard": None, "n_outliers": None, "n_scored": None, "mean_slice_dsc": None,
        "slice_dsc_quantiles_10_25_50_75_90": None, "mini_epoch_loss": None, "agreement": agreement,
        "outlier_threshold": float(params.outlier_threshold), "scoring": params.scoring,
        "far_negative_share": float(params.far_share),
    }
    if hard is not None:
        finite = selected_dsc[np.isfinite(selected_dsc)] if selected_dsc is not None else np.zeros(0)
        rec.update(n_hard=int(len(hard.hard_units)), n_outliers=int(hard.num_outliers),
                   n_fp_negatives=int(hard.num_fp_negatives),
                   n_scored=int(hard.num_scored),
                   mean_slice_dsc=None if np.isnan(hard.mean_dsc) else float(hard.mean_dsc),
                   slice_dsc_quantiles_10_25_50_75_90=np.percentile(finite, [10, 25, 50, 75, 90]).tolist()
                   if len(finite) else None,
                   mini_epoch_loss=None if mini_iterations == 0 else float(mini_epoch_loss))
    return rec


def log_line(rec: dict) -> str:
    line = (f"PNSS/HESS: r={rec['r']:.2f} (paper epoch {rec['paper_epoch']}, {rec['passes']:.2f} passes over D^r), "
            f"selected slices {rec['n_selected']}/{rec['n_total']} "
            f"({100 * rec['n_selected'] / max(rec['n_total'], 1):.1f}%), iterations {rec['main_iterations']} main + "
            f"{rec['mini_epoch_iterations']} mini")
    if not rec["hess_round"]:
        return line + ", no HESS round"
    dsc = "n/a" if rec["mean_slice_dsc"] is None else f"{rec['mean_slice_dsc']:.4f}"
    fp = f" (of them {rec['n_fp_negatives']} negative slices with false positives)" if rec.get("n_fp_negatives") \
        else ""
    line += (f", HESS round: hard {rec['n_hard']}{fp}, outliers {rec['n_outliers']}, mean slice DSC {dsc} "
             f"({rec['n_scored']} scored, {rec['scoring']})")
    if rec.get("agreement"):
        a = rec["agreement"]
        line += (f", forward vs exact: Spearman {a['spearman']:.3f} on {a['n_common']} slices, hard-set "
                 f"Jaccard {a['hard_jaccard']:.3f}")
    return line


def write_sampling_log(records: List[dict], output_folder: str) -> None:
    tmp = os.path.join(output_folder, "sampling_log.json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(records, f, indent=1)
    os.replace(tmp, os.path.join(output_folder, "sampling_log.json"))


@own_style
def plot_sampling_progress(records: List[dict], output_folder: str) -> None:
    import matplotlib
    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    if not records:
        return
    ep = [r["epoch"] for r in records]
    rounds = [r for r in records if r["hess_round"]]
    fig, ax = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    ax[0].plot(ep, [r["r"] for r in records], "b-o", ms=3, label="r")
    ax0b = ax[0].twinx()
    ax0b.plot(ep, [r["passes"] for r in records], "k:", label="passes over D^r")
    ax0b.set_ylabel("passes over D^r (paper epochs)")
    ax[0].set_ylabel("PNSS ratio r")
    ax[0].set_ylim(-0.05, 1.05)
    ax[1].plot(ep, [r["n_selected"] for r in records], "g:", label="selected slices |D^r|")
    if rounds:
        thr = rounds[-1]["outlier_threshold"]
        ax[1].plot([r["epoch"] for r in rounds], [r["n_hard"] for r in rounds], "r-o", ms=3, label="hard slices")
        ax[1].plot([r["epoch"] for r in rounds], [r["n_outliers"] for r in rounds], "k--",
                   label=f"outliers (DSC <= {thr:g})")
        q = np.array([[np.nan] * 5 if r["slice_dsc_quantiles_10_25_50_75_90"] is None
                      else r["slice_dsc_quantiles_10_25_50_75_90"] for r in rounds], dtype=float)
        rep = [r["epoch"] for r in rounds]
        ax[2].fill_between(rep, q[:, 0], q[:, 4], color="C0", alpha=0.2, label="10-90 %")
        ax[2].fill_between(rep, q[:, 1], q[:, 3], color="C0", alpha=0.4, label="25-75 %")
        ax[2].plot(rep, q[:, 2], "C0-", label="median")
        ax[2].plot(rep, [np.nan if r["mean_slice_dsc"] is None else r["mean_slice_dsc"] for r in rounds], "k-",
                   label="mean (s_mean, Eq. 8)")
        ax[2].axhline(thr, color="r", lw=0.8, ls="--", label="outlier threshold")
    ax[1].set_ylabel("slices")
    ax[1].legend(loc="best", fontsize=8)
    ax[2].set_ylabel("slice DSC at HESS rounds")
    ax[2].set_xlabel("nnU-Net epoch")
    ax[2].set_ylim(-0.02, 1.02)
    ax[2].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(output_folder, "sampling_progress.png"), dpi=90)
    plt.close(fig)
