"""Evaluation of prediction folders against a reference folder: the Python API behind the two commands.

    from nnunetv2_ext.evaluation import evaluate_folders, format_markdown_table
    result = evaluate_folders("labelsTr", "fold_0/validation", dataset_json="dataset.json")
    print(format_markdown_table({"baseline": result}))
"""
import multiprocessing
import os
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import isdir, isfile, load_json
from nnunetv2.configuration import default_num_processes
from nnunetv2.evaluation.evaluate_predictions import region_or_label_to_mask
from tqdm import tqdm

from nnunetv2_ext.evaluation.io import (EvaluationInputError, LabelOrRegion, LabelSetup, LabelSpec,
                                        files_by_case, find_dataset_json, guess_file_ending,
                                        label_setup_from_dataset_json, label_values, method_name_for_folder,
                                        prediction_files, read_case, read_segmentation, reader_class)
from nnunetv2_ext.evaluation.metrics import (DEFAULT_HD95_METHOD, DEFAULT_NSD_METHOD, DEFAULT_NSD_TOLERANCE_MM,
                                             DISTANCE_METRICS, METRICS, HDPenalty, check_metric_options,
                                             mask_metrics)
from nnunetv2_ext.evaluation.presets import label_options
from nnunetv2_ext.evaluation.summary import DEFAULT_WORST_FRACTION, describe
from nnunetv2_ext.evaluation.versions import software_versions

DatasetJson = Union[None, str, dict]
#: one tolerance for every label, or {label name / value / key: tolerance in mm}
Tolerance = Union[float, Mapping[Union[str, int], float]]


@dataclass
class EvaluationResult:
    """Per-case, per-label metrics of one prediction folder.

    ``per_case[case][label_key][metric]`` holds the values (metric names: ``metrics.METRICS`` plus the voxel counts
    TP/FP/FN/TN); ``label_key`` is nnU-Net's string form of the label or region (``"1"``, ``"(1, 2)"``).
    ``skipped`` maps the cases left out (only with ``skip_bad_cases``) to the reason."""
    ref_folder: str
    pred_folder: str
    labels: Tuple[LabelSpec, ...]
    cases: List[str]
    per_case: Dict[str, Dict[str, Dict[str, float]]]
    skipped: Dict[str, str] = field(default_factory=dict)
    settings: Dict = field(default_factory=dict)

    def label(self, label: Union[None, str, LabelOrRegion] = None) -> LabelSpec:
        """The LabelSpec for a label value, key or name; None = the only (or first) label."""
        if label is None:
            return self.labels[0]
        for spec in self.labels:
            if label in (spec.value, spec.key, spec.name):
                return spec
        raise KeyError(f"label {label!r} was not evaluated (labels: {[s.name for s in self.labels]})")

    def values(self, metric: str, label: Union[None, str, LabelOrRegion] = None,
               cases: Optional[Sequence[str]] = None) -> np.ndarray:
        """Values of ``metric`` for ``label`` over ``cases`` (default: all evaluated cases, in order)."""
        key = self.label(label).key
        return np.array([self.per_case[c][key][metric] for c in (self.cases if cases is None else cases)],
                        dtype=float)

    def missed(self, label: Union[None, str, LabelOrRegion] = None,
               cases: Optional[Sequence[str]] = None) -> np.ndarray:
        """True per case where the structure was missed: non-empty reference, empty prediction."""
        key = self.label(label).key
        counts = [self.per_case[c][key] for c in (self.cases if cases is None else cases)]
        return np.array([m["TP"] + m["FN"] > 0 and m["TP"] + m["FP"] == 0 for m in counts], dtype=bool)

    def describe(self, metric: str, label: Union[None, str, LabelOrRegion] = None,
                 cases: Optional[Sequence[str]] = None, worst_k: int = 5,
                 worst_fraction: float = DEFAULT_WORST_FRACTION) -> Dict:
        """``summary.describe`` of one metric and label; for HD95/ASSD the missed structures are passed along, so
        that they are counted and head the worst-case list even where their value is undefined."""
        cases = self.cases if cases is None else list(cases)
        missed = self.missed(label, cases) if metric in DISTANCE_METRICS else None
        return describe(self.values(metric, label, cases), cases, metric, worst_k, worst_fraction, missed)

    def summary(self, metrics: Sequence[str] = tuple(METRICS), worst_k: int = 5,
                worst_fraction: float = DEFAULT_WORST_FRACTION) -> Dict[str, Dict[str, Dict]]:
        """``summary[label_key][metric]`` = ``summary.describe(...)``: mean, std, min, max, median, worst cases."""
        return {spec.key: {m: self.describe(m, spec.key, None, worst_k, worst_fraction) for m in metrics}
                for spec in self.labels}


def _load_dataset_json(dataset_json: DatasetJson) -> Optional[dict]:
    if dataset_json is None or isinstance(dataset_json, dict):
        return dataset_json
    if not isfile(dataset_json):
        raise EvaluationInputError(f"dataset.json {dataset_json} does not exist")
    return load_json(dataset_json)


def _evaluate_case(task) -> Tuple[str, Optional[Dict], Optional[str]]:
    """Worker: (case, metrics per label key or None, error message or None)."""
    case, ref_file, pred_file, reader_cls, label_setup, per_label, common = task
    try:
        ref, pred, spacing = read_case(reader_cls(), case, ref_file, pred_file)
        if label_setup.allowed_values is not None:
            for role, seg in (("reference", ref), ("prediction", pred)):
                unknown = np.setdiff1d(label_values(seg), label_setup.allowed_values)
                if unknown.size:
                    raise EvaluationInputError(f"case {case}: the {role} holds labels {unknown.tolist()} that are not "
                                               f"in the label set {list(label_setup.allowed_values)}")
        ignore = ref == label_setup.ignore_label if label_setup.ignore_label is not None else None
        metrics = {spec.key: mask_metrics(region_or_label_to_mask(ref, spec.value),
                                          region_or_label_to_mask(pred, spec.value), spacing, ignore,
                                          **per_label[spec.key], **common)
                   for spec in label_setup.labels}
        return case, metrics, None
    except EvaluationInputError as e:
        return case, None, str(e)


def _reference_labels(task) -> Tuple[str, Optional[List[int]], Optional[str]]:
    case, ref_file, reader_cls = task
    try:
        ref, _ = read_segmentation(reader_cls(), case, ref_file, "reference")
    except EvaluationInputError as e:
        return case, None, str(e)
    return case, [int(v) for v in label_values(ref) if v != 0], None


def _map(function, tasks: list, num_processes: int, progress: bool, desc: str) -> list:
    """``function`` over ``tasks`` in ``num_processes`` worker processes (in this process if 1), with a bar."""
    bar = dict(total=len(tasks), desc=desc, disable=not progress, unit="case")
    if num_processes <= 1 or len(tasks) <= 1:
        return [function(t) for t in tqdm(tasks, **bar)]
    # forkserver: workers start from a clean process that has imported this module (and so nnU-Net and torch)
    # once, instead of once per worker as with spawn; unlike plain fork it is safe in a parent with threads
    context = multiprocessing.get_context("forkserver" if "forkserver" in multiprocessing.get_all_start_methods()
                                          else "spawn")
    if context.get_start_method() == "forkserver":
        context.set_forkserver_preload([__name__])
    with context.Pool(min(num_processes, len(tasks))) as pool:
        return list(tqdm(pool.imap(function, tasks), **bar))


@dataclass
class _Plan:
    """Everything checked before any metric is computed."""
    tasks: list
    skipped: Dict[str, str]
    label_setup: LabelSetup
    settings: Dict


def _split_tolerance(nsd_tolerance_mm: Tolerance) -> Tuple[float, Optional[Mapping]]:
    if isinstance(nsd_tolerance_mm, Mapping):  # "__default__": the tolerance of labels not listed
        per_label = {k: v for k, v in nsd_tolerance_mm.items() if k != "__default__"}
        return float(nsd_tolerance_mm.get("__default__", DEFAULT_NSD_TOLERANCE_MM)), per_label
    return float(nsd_tolerance_mm), None


def _plan(ref_folder: str, pred_folder: str, dataset_json: DatasetJson, labels, file_ending: Optional[str],
          skip_bad_cases: bool, num_processes: int, progress: bool, nsd_tolerance_mm: Tolerance,
          label_setup: Optional[LabelSetup] = None, nsd_method: str = DEFAULT_NSD_METHOD,
          hd95_method: str = DEFAULT_HD95_METHOD, hd_penalty: HDPenalty = None,
          nsd_preset: Optional[str] = None) -> _Plan:
    if not isdir(ref_folder):
        raise EvaluationInputError(f"reference folder {ref_folder} does not exist")
    if not isdir(pred_folder):
        raise EvaluationInputError(f"prediction folder {pred_folder} does not exist")
    default_tolerance, per_label_tolerance = _split_tolerance(nsd_tolerance_mm)
    if not default_tolerance > 0:
        raise EvaluationInputError(f"nsd_tolerance_mm must be > 0, got {default_tolerance}")
    try:
        check_metric_options(nsd_method, hd95_method, hd_penalty)
    except ValueError as e:
        raise EvaluationInputError(str(e)) from None
    if isinstance(dataset_json, os.PathLike):
        dataset_json = os.fspath(dataset_json)
    dataset_json_source = dataset_json if isinstance(dataset_json, str) else None
    if dataset_json is None:
        dataset_json_source = find_dataset_json(pred_folder, ref_folder)
        dataset_json = dataset_json_source
    dj = _load_dataset_json(dataset_json)
    if file_ending is None:
        file_ending = dj["file_ending"] if dj is not None and "file_ending" in dj else guess_file_ending(ref_folder)
    ref_files = files_by_case(ref_folder, file_ending)
    if not ref_files:
        raise EvaluationInputError(f"no {file_ending} files in reference folder {ref_folder}")
    pred_files, single_fold = prediction_files(pred_folder, file_ending)
    if not pred_files:
        raise EvaluationInputError(f"no {file_ending} predictions in {pred_folder} (nor in its validation/ or "
                                   f"fold_*/validation/ folders)")
    skipped: Dict[str, str] = {}
    problems = {c: f"case {c}: prediction {f} has no reference in {ref_folder}"
                for c, f in pred_files.items() if c not in ref_files}
    if not single_fold:  # a single fold's validation folder predicts only that fold's cases
        problems.update({c: f"case {c}: no prediction in {pred_folder}" for c in ref_files if c not in pred_files})
    if problems and not skip_bad_cases:
        listed = "\n  ".join(sorted(problems.values()))
        raise EvaluationInputError(f"{len(problems)} case(s) cannot be paired (use skip_bad_cases / --skip-bad-cases "
                                   f"to evaluate the others and list these):\n  {listed}")
    skipped.update(problems)
    cases = sorted(c for c in pred_files if c in ref_files)
    reader_cls = reader_class(dj, file_ending, ref_files[cases[0]] if cases else next(iter(ref_files.values())))
    labels_inferred = False
    if label_setup is None:
        if dj is not None:
            label_setup = label_setup_from_dataset_json(dj, labels)
        else:  # no dataset.json: every non-zero label found in the references (or the given ones)
            labels_inferred = labels is None
            if labels is None:
                found = _map(_reference_labels, [(c, ref_files[c], reader_cls) for c in cases], num_processes,
                             progress, "reading reference labels")
                errors = {c: e for c, _, e in found if e is not None}
                if errors and not skip_bad_cases:
                    raise EvaluationInputError("\n".join(errors.values()))
                skipped.update(errors)
                labels = sorted({v for _, vs, _ in found if vs for v in vs})
                if not labels:
                    raise EvaluationInputError(f"the references in {ref_folder} hold no foreground label; give "
                                               f"dataset.json or labels")
            specs = tuple(LabelSpec(v, str(v)) for v in labels)
            allowed = None
            if labels_inferred:
                allowed = tuple(sorted({0} | {int(v) for v in labels}))
            label_setup = LabelSetup(specs, None, allowed)
    cases = [c for c in cases if c not in skipped]
    if not cases:
        raise EvaluationInputError(f"no case left to evaluate in {pred_folder}")
    per_label = label_options(label_setup.labels, default_tolerance, per_label_tolerance, nsd_preset)
    common = {"nsd_method": nsd_method, "hd95_method": hd95_method, "hd_penalty": hd_penalty}
    tasks = [(c, ref_files[c], pred_files[c], reader_cls, label_setup, per_label, common) for c in cases]
    tolerances = {k: o["nsd_tolerance_mm"] for k, o in per_label.items()}
    settings = {"dataset_json": dataset_json_source if dataset_json_source else ("dict" if dj else None),
                "file_ending": file_ending, "reader": reader_cls.__name__, "labels_inferred": labels_inferred,
                "ignore_label": label_setup.ignore_label,
                # one number when every label has the same tolerance (tables then title the column NSD@Xmm)
                "nsd_tolerance_mm": (next(iter(tolerances.values())) if len(set(tolerances.values())) == 1
                                     else tolerances),
                "nsd_tolerance_mm_per_label": tolerances, "nsd_preset": nsd_preset, "nsd_method": nsd_method,
                "hd95_method": hd95_method, "hd_penalty": hd_penalty,
                "cropped_to_reference_z": sorted(k for k, o in per_label.items() if o["crop_to_reference_z"]),
                "single_fold_folder": single_fold, "versions": software_versions()}
    return _Plan(tasks, skipped, label_setup, settings)


def _collect(ref_folder: str, pred_folder: str, plan: _Plan, outputs: list, skip_bad_cases: bool
             ) -> EvaluationResult:
    errors = {c: e for c, _, e in outputs if e is not None}
    if errors and not skip_bad_cases:
        raise EvaluationInputError(f"{len(errors)} case(s) failed (use skip_bad_cases / --skip-bad-cases to "
                                   f"evaluate the others and list these):\n  " + "\n  ".join(errors.values()))
    per_case = {c: m for c, m, e in outputs if e is None}
    if not per_case:
        raise EvaluationInputError(f"no case of {pred_folder} could be evaluated:\n  " + "\n  ".join(errors.values()))
    return EvaluationResult(os.path.abspath(ref_folder), os.path.abspath(pred_folder), plan.label_setup.labels,
                            sorted(per_case), per_case, {**plan.skipped, **errors}, plan.settings)


def evaluate_folders(ref_folder: str, pred_folder: str, dataset_json: DatasetJson = None,
                     labels: Optional[Sequence[LabelOrRegion]] = None,
                     num_processes: int = default_num_processes,
                     nsd_tolerance_mm: Tolerance = DEFAULT_NSD_TOLERANCE_MM, skip_bad_cases: bool = False,
                     file_ending: Optional[str] = None, progress: bool = True,
                     nsd_method: str = DEFAULT_NSD_METHOD, hd95_method: str = DEFAULT_HD95_METHOD,
                     hd_penalty: HDPenalty = None, nsd_preset: Optional[str] = None) -> EvaluationResult:
    """Evaluates every case of ``pred_folder`` against ``ref_folder``.

    Args:
        ref_folder: reference segmentations (e.g. nnUNet_raw/DatasetX/labelsTr or nnUNet_preprocessed/.../
            gt_segmentations), one file per case, named ``<case><file_ending>``.
        pred_folder: predictions with the same file names; or an nnU-Net fold folder (its ``validation/`` is used,
            only that fold's cases are expected), or a trainer folder (the ``fold_*/validation`` folders pooled).
        dataset_json: path or dict of an nnU-Net dataset.json: labels / regions, their names, the ignore label,
            file_ending and reader. None: taken from the prediction folder or its parents if there is one there,
            otherwise the labels are inferred (every non-zero label of the references) and the reader from the
            file ending.
        labels: evaluate only these labels / regions (values as in dataset.json).
        num_processes: worker processes (1 = in this process).
        nsd_tolerance_mm: tolerance of the normalised surface Dice in mm (default 1 mm, FLARE21's convention), or
            {label name / value: mm} (labels not listed: 1 mm or the preset's).
        skip_bad_cases: instead of raising on missing, unreadable, misaligned or unknown-label cases, leave them
            out and list them in ``result.skipped``.
        file_ending: e.g. ".nii.gz"; default from dataset.json, else guessed from the reference folder.
        progress: show a progress bar.
        nsd_method: "surfel" (surface elements weighted by area: DeepMind's surface-distance, FLARE) or "voxel".
        hd95_method: "max-directed" (MONAI) or "pooled" (MedPy).
        hd_penalty: None (HD95/ASSD undefined when a mask is empty; missed structures listed), "diagonal" or a
            distance in mm for a case where exactly one mask is empty (0 when both are).
        nsd_preset: "flare22": FLARE22's per-organ tolerances and z-cropping (see ``presets``).
    Raises:
        EvaluationInputError naming the case or parameter, before any metric is computed for folder/pairing
        problems, and after the parallel pass (nothing written) for problems found when reading a case.
    """
    plan = _plan(ref_folder, pred_folder, dataset_json, labels, file_ending, skip_bad_cases, num_processes, progress,
                 nsd_tolerance_mm, None, nsd_method, hd95_method, hd_penalty, nsd_preset)
    outputs = _map(_evaluate_case, plan.tasks, num_processes, progress, f"evaluating {os.path.basename(pred_folder)}")
    return _collect(ref_folder, pred_folder, plan, outputs, skip_bad_cases)


def compare_folders(ref_folder: str, pred_folders: Sequence[str], names: Optional[Sequence[str]] = None,
                    dataset_json: DatasetJson = None, labels: Optional[Sequence[LabelOrRegion]] = None,
                    num_processes: int = default_num_processes,
                    nsd_tolerance_mm: Tolerance = DEFAULT_NSD_TOLERANCE_MM, skip_bad_cases: bool = False,
                    file_ending: Optional[str] = None, progress: bool = True,
                    nsd_method: str = DEFAULT_NSD_METHOD, hd95_method: str = DEFAULT_HD95_METHOD,
                    hd_penalty: HDPenalty = None, nsd_preset: Optional[str] = None) -> Dict[str, EvaluationResult]:
    """Evaluates several prediction folders against one reference folder (arguments as in ``evaluate_folders``),
    all cases of all methods in one process pool. Returns {method name: EvaluationResult} in the given order;
    default names are the trainer names of nnU-Net result folders, else the folder names."""
    if len(pred_folders) < 2:
        raise EvaluationInputError("compare needs at least two prediction folders")
    if names is None:
        names = [method_name_for_folder(f) for f in pred_folders]
    if len(names) != len(pred_folders):
        raise EvaluationInputError(f"{len(names)} names for {len(pred_folders)} prediction folders")
    if len(set(names)) != len(names):
        raise EvaluationInputError(f"method names must differ, got {list(names)} (give --names)")
    plans = []
    for folder in pred_folders:
        plans.append(_plan(ref_folder, folder, dataset_json, labels, file_ending, skip_bad_cases, num_processes,
                           progress, nsd_tolerance_mm, plans[0].label_setup if plans else None, nsd_method,
                           hd95_method, hd_penalty, nsd_preset))
        if [s.key for s in plans[-1].label_setup.labels] != [s.key for s in plans[0].label_setup.labels]:
            raise EvaluationInputError(f"{folder} evaluates labels {plans[-1].label_setup.labels}, but "
                                       f"{pred_folders[0]} {plans[0].label_setup.labels}")
    tasks = [t for p in plans for t in p.tasks]
    outputs = _map(_evaluate_case, tasks, num_processes, progress, f"evaluating {len(pred_folders)} methods")
    for plan in plans[1:]:
        plan.settings["labels_inferred"] = plans[0].settings["labels_inferred"]
    results, start = {}, 0
    for name, folder, plan in zip(names, pred_folders, plans):
        results[name] = _collect(ref_folder, folder, plan, outputs[start:start + len(plan.tasks)], skip_bad_cases)
        start += len(plan.tasks)
    return results
