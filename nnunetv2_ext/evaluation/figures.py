"""Pictures of one evaluation: per-case values of a few metrics, and overlays of the worst cases.

The overlays reuse nnU-Net's ``nnunetv2.utilities.overlay_plots.generate_overlay`` (the colouring behind
``nnUNetv2_plot_overlay_pngs``) on the axial slice where the prediction is most wrong, colour-coding agreement,
missed and extra voxels instead of labels.
"""
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from nnunetv2_ext.evaluation.evaluate import EvaluationResult
from nnunetv2_ext.evaluation.io import files_by_case, prediction_files, read_segmentation, reader_class
from nnunetv2_ext.evaluation.metrics import METRICS, badness
from nnunetv2_ext.figure_style import own_style

#: overlay codes -> colours: agreement (TP) green, missed (FN) red, extra (FP) blue
OVERLAY_COLOURS = {"agreement": (0.0, 0.75, 0.0), "missed": (1.0, 0.13, 0.13), "extra": (0.13, 0.44, 1.0)}
_PERCENT = ("DSC", "IoU", "precision", "recall", "specificity", "NSD")


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


@own_style
def plot_per_case(result: EvaluationResult, path: str, metrics: Sequence[str] = ("DSC", "HD95", "NSD"),
                  label=None) -> str:
    """PNG: one panel per metric, one bar per case sorted from worst to best; missed structures are marked
    "missed" (their HD95/ASSD is undefined unless a penalty was given)."""
    plt = _pyplot()
    spec = result.label(label)
    metrics = [m for m in metrics if m in METRICS]
    fig, axes = plt.subplots(len(metrics), 1, figsize=(max(6.0, 0.28 * len(result.cases) + 2), 2.8 * len(metrics)),
                             squeeze=False)
    missed = result.missed(spec.key)
    for ax, metric in zip(axes[:, 0], metrics):
        values = result.values(metric, spec.key)
        scale = 100.0 if metric in _PERCENT else 1.0
        bad = badness(metric, np.nan_to_num(values, nan=np.inf if METRICS[metric][0] is False else -np.inf))
        order = np.argsort(-bad, kind="stable")
        shown = values[order] * scale
        colours = ["tab:red" if missed[i] else "tab:blue" for i in order]
        ax.bar(range(len(order)), np.nan_to_num(shown, nan=0.0), color=colours)
        for x, i in enumerate(order):
            if np.isnan(values[i]):
                ax.text(x, 0, "missed" if missed[i] else "undef.", rotation=90, fontsize=6, color="tab:red",
                        ha="center", va="bottom")
        ax.set_xticks(range(len(order)), [result.cases[i] for i in order], rotation=90, fontsize=6)
        unit = "%" if metric in _PERCENT else METRICS[metric][1]
        ax.set_ylabel(f"{metric} ({unit})" if unit else metric)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].set_title(f"label {spec.name}: {len(result.cases)} cases, worst first"
                         + (f"; {int(missed.sum())} missed (red)" if missed.any() else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _image_file(images_folder: Optional[str], case: str, file_ending: str) -> Optional[str]:
    if images_folder is None:
        return None
    path = os.path.join(images_folder, f"{case}_0000{file_ending}")
    return path if os.path.isfile(path) else None


def error_overlay(reference: np.ndarray, prediction: np.ndarray, image: Optional[np.ndarray] = None,
                  opacity: float = 0.6) -> np.ndarray:
    """RGB uint8 (H, W, 3) of one slice: agreement green, missed (false negative) red, extra (false positive) blue
    (``OVERLAY_COLOURS``), blended with ``opacity`` over the image (clipped to its 0.5-99.5 percentiles) or, without
    an image, over a dark background with the reference a little lighter.

    Our own blend rather than nnU-Net's ``generate_overlay``: that one rescales by the background's range, and a
    constant background (no image, a slice without reference: the false-positive-only case) becomes NaN, drawn black.
    """
    reference, prediction = np.asarray(reference, bool), np.asarray(prediction, bool)
    if image is not None:
        low, high = np.percentile(image, (0.5, 99.5))
        grey = (np.clip(image, low, high) - low) / (high - low) if high > low else np.full(image.shape, 0.5)
    else:
        grey = 0.15 + 0.2 * reference
    rgb = np.repeat(np.asarray(grey, np.float64)[..., None], 3, axis=-1)
    for mask, name in ((reference & prediction, "agreement"), (reference & ~prediction, "missed"),
                       (~reference & prediction, "extra")):
        rgb[mask] = (1 - opacity) * rgb[mask] + opacity * np.asarray(OVERLAY_COLOURS[name])
    return np.round(rgb * 255).astype(np.uint8)


def default_images_folder(ref_folder: str) -> Optional[str]:
    """imagesTr / imagesTs beside a labelsTr / labelsTs reference folder, if it exists."""
    ref_folder = os.path.normpath(os.path.abspath(ref_folder))
    name = os.path.basename(ref_folder)
    if name.startswith("labels"):
        candidate = os.path.join(os.path.dirname(ref_folder), "images" + name[len("labels"):])
        return candidate if os.path.isdir(candidate) else None
    return None


@own_style
def write_worst_case_overlays(result: EvaluationResult, output_folder: str, k: int = 3, label=None,
                              images_folder: Optional[str] = None) -> List[str]:
    """One PNG per worst case by DSC (missed structures first): the axial slice with the most wrong voxels (false
    positives and false negatives alike), drawn by :func:`error_overlay` over the CT (channel 0 from
    ``images_folder``) or, without it, over the reference. Returns the paths written."""
    from nnunetv2.evaluation.evaluate_predictions import region_or_label_to_mask

    plt = _pyplot()
    spec = result.label(label)
    file_ending = result.settings["file_ending"]
    ref_files = files_by_case(result.ref_folder, file_ending)
    pred_files, _ = prediction_files(result.pred_folder, file_ending)
    dsc = result.values("DSC", spec.key)
    order = np.argsort(-badness("DSC", np.nan_to_num(dsc, nan=1.0)), kind="stable")[:k]
    paths = []
    for i in order:
        case = result.cases[i]
        reader_cls = reader_class(None, file_ending, ref_files[case])
        ref, _ = read_segmentation(reader_cls(), case, ref_files[case], "reference")
        pred, _ = read_segmentation(reader_cls(), case, pred_files[case], "prediction")
        r, p = region_or_label_to_mask(ref, spec.value), region_or_label_to_mask(pred, spec.value)  # z, y, x
        wrong = (r ^ p).reshape(r.shape[0], -1).sum(1)
        z = int(np.argmax(wrong)) if wrong.any() else int(np.argmax(r.reshape(r.shape[0], -1).sum(1)))
        image_file = _image_file(images_folder, case, file_ending)
        image = (reader_cls().read_images((image_file,))[0][0][z].astype(np.float32) if image_file is not None
                 else None)
        overlay = error_overlay(r[z], p[z], image)
        fig, ax = plt.subplots(figsize=(5, 5.4))
        ax.imshow(overlay)
        ax.set_axis_off()
        ax.set_title(f"{case}, label {spec.name}, slice {z}: DSC {dsc[i] * 100:.1f} %\n"
                     f"green: agreement, red: missed ({int((r[z] & ~p[z]).sum())} voxels), "
                     f"blue: extra ({int((~r[z] & p[z]).sum())} voxels)", fontsize=8)
        path = os.path.join(output_folder, f"worst_{len(paths) + 1}_{case}_{spec.name}.png".replace(os.sep, "_"))
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths


def write_evaluation_figures(result: EvaluationResult, output_folder: str, overlays: int = 3,
                             images_folder: Optional[str] = None,
                             metrics: Sequence[str] = ("DSC", "HD95", "NSD")) -> Dict[str, str]:
    """Per label: ``per_case_<label>.png``, and ``worst_<i>_<case>_<label>.png`` for the ``overlays`` worst cases."""
    paths = {}
    for spec in result.labels:
        name = spec.name.replace(os.sep, "_")
        paths[f"per_case_png_{spec.key}"] = plot_per_case(result, os.path.join(output_folder,
                                                                                f"per_case_{name}.png"),
                                                          metrics, spec.key)
        if overlays > 0:
            for j, path in enumerate(write_worst_case_overlays(result, output_folder, overlays, spec.key,
                                                                images_folder)):
                paths[f"overlay_{spec.key}_{j + 1}"] = path
    return paths
