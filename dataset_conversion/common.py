"""Shared core of the dataset converters: find cases, validate ALL of them, then write the dataset atomically.

Flow of :func:`run_conversion` (every converter in this package goes through it):

1. ``converter.find_cases()`` lists the source cases (cheap: file names only). Images without label and labels
   without image are reported as problems here.
2. Every case is validated in parallel (headers/geometry only, no pixel data): ``converter.validate_case``.
3. If any case is bad, a report naming each case and the reason is printed and nothing is written, unless
   ``skip_bad`` is set; then the bad cases are left out and listed in the report (and in the manifest file).
4. The good cases are written in parallel into a temporary folder next to the target (``.DatasetXXX_Name.tmp-PID``);
   ``dataset.json`` (via nnU-Net's ``generate_dataset_json``), an optional ``splits_final.json`` and our manifest
   ``nnunetv2_ext_conversion.json`` follow; the folder is renamed to the target only at the very end, so a crash or
   a bad case found while writing leaves nothing half-written.

Idempotence: the manifest records the converter, its options and a fingerprint of the source files (relative path,
size, modification time). Re-running the same command on unchanged input finds an identical manifest and does
nothing. A target that exists with a different manifest is only replaced with ``overwrite=True``.

``splits_final.json`` is written into the RAW dataset folder: ``nnUNetv2_plan_and_preprocess`` (nnU-Net >= 2.5,
``ExperimentPlanner.__init__``) copies it to ``nnUNet_preprocessed/DatasetXXX_Name/`` where training reads it.
"""
import argparse
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
from nnunetv2.configuration import default_num_processes
from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
from tqdm import tqdm

from nnunetv2_ext.file_checks import TruncatedFileError, check_complete
from nnunetv2_ext.io_atomic import write_folder_atomically
from nnunetv2_ext.dataset_conversion.geometry import Geometry, grid_mismatch, label_on_image_grid

MANIFEST_NAME = "nnunetv2_ext_conversion.json"
SPLITS_NAME = "splits_final.json"
FILE_ENDING = ".nii.gz"
SUBSET_FOLDERS = {"train": ("imagesTr", "labelsTr"), "test": ("imagesTs", "labelsTs"),
                  "unlabeled": ("imagesUnlabeled", None)}


class ConversionError(Exception):
    """Wrong arguments or input folder (not tied to one case): reported before anything is written."""


class CaseError(Exception):
    """A case that cannot be converted; ``reason`` says why in words a user can act on."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class SourceCase:
    """One case of a source dataset.

    identifier: nnU-Net case identifier (file names become ``{identifier}_{channel:04d}.nii.gz``).
    subset: "train" (imagesTr/labelsTr), "test" (imagesTs, plus labelsTs when it has a label) or "unlabeled"
        (listed in ``unlabeled_cases.json``, optionally written to imagesUnlabeled/).
    images: source image paths (one per file to read; a DICOM case holds its slice files after validation).
    label: source label path or None.
    info: converter-specific details filled in by validation (e.g. the image geometry).
    """
    identifier: str
    subset: str
    images: Tuple[str, ...]
    label: Optional[str] = None
    info: Dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class CaseProblem:
    identifier: str
    reason: str


@dataclass
class CaseListing:
    """What ``find_cases`` found: convertible cases, problems (e.g. image without label), notes (expected gaps)."""
    cases: List[SourceCase]
    problems: List[CaseProblem] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)


@dataclass
class ConversionReport:
    dataset_folder: Path
    converted: Dict[str, List[str]] = field(default_factory=dict)  # subset -> identifiers
    problems: List[CaseProblem] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    up_to_date: bool = False
    written: bool = False

    def format(self) -> str:
        lines = []
        if self.up_to_date:
            lines.append(f"{self.dataset_folder} is up to date (same converter, options and source files): "
                         f"nothing to do.")
        elif self.written:
            counts = ", ".join(f"{len(v)} {k}" for k, v in self.converted.items() if v)
            lines.append(f"Wrote {self.dataset_folder} ({counts}).")
        for note in self.notes:
            lines.append(f"Note: {note}")
        if self.problems:
            what = "Skipped" if self.written else "Bad"
            lines.append(f"{what} cases ({len(self.problems)}):")
            lines += [f"  {p.identifier}: {p.reason}" for p in self.problems]
            if not self.written:
                lines.append("Nothing was written. Fix these cases, or pass --skip-bad-cases to convert the others.")
        return "\n".join(lines)


class BadCasesError(Exception):
    """Raised (with the report) when bad cases are found and ``skip_bad`` is off."""

    def __init__(self, report: ConversionReport):
        super().__init__(report.format())
        self.report = report


class DatasetConverter(ABC):
    """One source dataset. Instances are sent to worker processes, so keep their attributes picklable.

    Subclasses set ``dataset_name`` (folder name part after ``DatasetXXX_``), ``channel_names``, ``labels``,
    implement ``find_cases``/``convert_case`` and, for other than single-file images, ``validate_case``.
    ``options`` (plain JSON values) go into the manifest so that a re-run with other options is not mistaken for an
    up-to-date dataset.
    """
    dataset_name: str
    channel_names: Dict[int, str]
    labels: Dict[str, int]
    extra_json: Dict[str, Any] = {}

    def __init__(self, input_folder: str, geometry_tolerance: float = 0.1, **options):
        self.input_folder = Path(input_folder).resolve()
        if not self.input_folder.is_dir():
            raise ConversionError(f"input folder {input_folder} does not exist")
        if not 0 < geometry_tolerance < 0.5:
            raise ConversionError(f"geometry tolerance must be in (0, 0.5) voxels, got {geometry_tolerance}")
        self.geometry_tolerance = geometry_tolerance
        self.options = dict(options, geometry_tolerance=geometry_tolerance)

    @abstractmethod
    def find_cases(self) -> CaseListing:
        ...

    def validate_case(self, case: SourceCase) -> SourceCase:
        """Header-level checks; raise CaseError. Returns the case with what writing needs filled in.

        Default (one image file readable by SimpleITK, optional label): the image geometry, and the label checked
        against it; stored as ``info["geometry"]``.
        """
        require_scalar_voxels(case.images[0], "image")
        geometry = Geometry.from_file(case.images[0])
        if case.label is not None:
            self.check_label_geometry(case, geometry)
        return replace(case, info={"geometry": geometry})

    @abstractmethod
    def convert_case(self, case: SourceCase, dataset_folder: Path) -> None:
        """Writes the case's files into ``dataset_folder``; raise CaseError."""

    def splits(self, converted: Dict[str, List[str]]) -> Optional[List[Dict[str, List[str]]]]:
        """nnU-Net splits (list of {"train": [...], "val": [...]}) for splits_final.json, or None."""
        return None

    def write_extras(self, dataset_folder: Path, converted: Dict[str, List[str]], cases: List[SourceCase]) -> None:
        """Additional files (e.g. the list of unlabeled cases)."""

    # ---- helpers shared by the dataset modules -------------------------------------------------------------------
    def check_label_geometry(self, case: SourceCase, image: Geometry) -> Geometry:
        """Raises CaseError naming both geometries when the label does not describe the image's voxel grid."""
        require_scalar_voxels(case.label, "label")
        label = Geometry.from_file(case.label)
        mismatch = grid_mismatch(image, label, self.geometry_tolerance)
        if mismatch is not None:
            raise CaseError(f"label does not match the image ({mismatch}); image: {image.describe()}; "
                            f"label {Path(case.label).name}: {label.describe()}")
        return label

    def write_label(self, label: sitk.Image, image: Geometry, path: Path,
                    mapping: Optional[Dict[int, int]] = None) -> None:
        """Puts ``label`` onto the image grid, applies ``mapping`` (source value -> target value; every value
        present must be a key) or else checks values against ``self.labels``, writes uint8."""
        label = label_on_image_grid(label, image, self.geometry_tolerance)
        array = sitk.GetArrayViewFromImage(label)
        present = present_values(array)
        allowed = set(mapping) if mapping is not None else set(self.labels.values())
        unexpected = sorted(set(present.tolist()) - allowed)
        if unexpected:
            raise CaseError(f"label values {unexpected} are not among the expected {sorted(allowed)}")
        if mapping is not None and any(k != v for k, v in mapping.items()):
            lut = np.zeros(int(present.max()) + 1, dtype=np.uint8)
            for k, v in mapping.items():
                if k < len(lut):
                    lut[k] = v
            out = sitk.GetImageFromArray(lut[np.asarray(array, dtype=np.int64)])
            out.CopyInformation(label)
            label = out
        sitk.WriteImage(sitk.Cast(label, sitk.sitkUInt8), str(path), useCompression=True)


def require_scalar_voxels(path: str, role: str) -> None:
    """Raises CaseError when ``path`` stores more than one value per voxel (an RGB or vector image): CT and labels
    are one scalar per voxel, and nnU-Net would read such a file as a vector image (header only, no pixel data)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    components = reader.GetNumberOfComponents()
    if components != 1:
        raise CaseError(f"{role} {Path(path).name} has {components} components per voxel (an RGB or vector "
                        f"image); expected one grey value per voxel")


def present_values(array: np.ndarray) -> np.ndarray:
    """Sorted distinct values of a label array; np.bincount for small non-negative integers (several times faster
    than np.unique on CT-sized volumes)."""
    if np.issubdtype(array.dtype, np.integer) and array.size:
        low, high = int(array.min()), int(array.max())
        if low >= 0 and high < 1 << 16:
            return np.flatnonzero(np.bincount(array.ravel(), minlength=high + 1))
    return np.unique(array)


# ---- splits ------------------------------------------------------------------------------------------------------

def kfold_test_folds(identifiers: Sequence[str], num_folds: int, seed: int) -> List[List[str]]:
    """Seeded random partition of ``identifiers`` into ``num_folds`` test folds, sizes as equal as possible with the
    larger folds first (82 cases, 4 folds -> 21/21/20/20). Depends only on the sorted identifiers and the seed."""
    ordered = sorted(identifiers)
    permutation = np.random.default_rng(seed).permutation(len(ordered))
    return [sorted(ordered[i] for i in part) for part in np.array_split(permutation, num_folds)]


def holdout_split(identifiers: Sequence[str], num_test: int, seed: int) -> Tuple[List[str], List[str]]:
    """Seeded random (train, test) split with ``num_test`` test cases."""
    if num_test >= len(identifiers):
        raise ConversionError(f"cannot hold out {num_test} test cases from {len(identifiers)} cases")
    ordered = sorted(identifiers)
    permutation = np.random.default_rng(seed).permutation(len(ordered))
    test = sorted(ordered[i] for i in permutation[:num_test])
    train = sorted(set(ordered) - set(test))
    return train, test


# ---- running ------------------------------------------------------------------------------------------------------

def _validate_worker(args):
    converter, case = args
    try:
        for f in case.images + ((case.label,) if case.label else ()):
            check_complete(f)  # a cut NIfTI file would be read (and copied) with zeros for its missing part
        return converter.validate_case(case), None
    except TruncatedFileError as e:
        return None, CaseProblem(case.identifier, str(e))
    except CaseError as e:
        return None, CaseProblem(case.identifier, e.reason)
    except Exception as e:  # unreadable/corrupt files raise library errors: report them for this case
        return None, CaseProblem(case.identifier, f"cannot be read: {type(e).__name__}: {str(e).strip()[:300]}")


def _convert_worker(args):
    converter, case, folder = args
    try:
        converter.convert_case(case, folder)
        return case, None
    except CaseError as e:
        return None, CaseProblem(case.identifier, e.reason)
    except Exception as e:
        return None, CaseProblem(case.identifier, f"failed while writing: {type(e).__name__}: "
                                                  f"{str(e).strip()[:300]}")


def _run_parallel(worker: Callable, tasks: List[tuple], num_processes: int, description: str) -> list:
    if num_processes <= 1 or len(tasks) <= 1:
        return [worker(t) for t in tqdm(tasks, desc=description, disable=None)]
    # spawn (as nnU-Net does): SimpleITK's thread pools do not survive fork reliably
    with multiprocessing.get_context("spawn").Pool(min(num_processes, len(tasks))) as pool:
        return list(tqdm(pool.imap(worker, tasks), total=len(tasks), desc=description, disable=None))


def files_below(folder: Path) -> List[str]:
    """Paths (strings: Path objects are slow for the ~20000 slice files of a full dataset) of all non-hidden files
    below ``folder``, sorted; symbolic links to folders are followed (unlike rglob)."""
    return sorted(os.path.join(d, f) for d, _, files in os.walk(folder, followlinks=True)
                  for f in files if not f.startswith("."))


def has_files(folder: Path) -> bool:
    """True if any non-hidden file lies below ``folder`` (stops at the first one)."""
    return any(not f.startswith(".") for _, _, files in os.walk(folder, followlinks=True) for f in files)


def source_fingerprint(cases: Iterable[SourceCase], root: Path) -> Dict[str, Any]:
    """Number of source files and a SHA-256 over their (relative path, size, mtime_ns): changes when the input
    changes, without listing thousands of files in the manifest. Plain os calls: this runs on every invocation."""
    entries = []
    prefix = len(str(root)) + 1
    for case in cases:
        for p in list(case.images) + ([case.label] if case.label else []):
            for f in files_below(Path(p)) if os.path.isdir(p) else [str(p)]:
                st = os.stat(f)
                entries.append(f"{f[prefix:] if f.startswith(str(root)) else f}\t{st.st_size}\t{st.st_mtime_ns}")
    entries.sort()
    return {"files": len(entries), "sha256": hashlib.sha256("\n".join(entries).encode()).hexdigest()}


def raw_folder() -> Path:
    raw = os.environ.get("nnUNet_raw")
    if not raw:
        raise ConversionError("the environment variable nnUNet_raw is not set (see nnU-Net's "
                              "documentation/set_environment_variables.md)")
    return Path(raw)


def run_conversion(converter: DatasetConverter, dataset_id: int, overwrite: bool = False, skip_bad: bool = False,
                   num_processes: int = default_num_processes) -> ConversionReport:
    """Converts ``converter``'s dataset to ``$nnUNet_raw/DatasetXXX_Name`` (see module docstring).

    Raises ConversionError for wrong arguments/input and BadCasesError (carrying the report) when bad cases exist
    and ``skip_bad`` is False; nothing is written in either case.
    """
    if not 1 <= dataset_id <= 999:
        raise ConversionError(f"dataset id must be in 1..999, got {dataset_id}")
    folder_name = f"Dataset{dataset_id:03d}_{converter.dataset_name}"
    raw = raw_folder()
    raw.mkdir(parents=True, exist_ok=True)
    others = [p.name for p in raw.glob(f"Dataset{dataset_id:03d}_*") if p.name != folder_name]
    if others:
        raise ConversionError(f"dataset id {dataset_id} is already used by {others} in {raw}; choose another -d")
    target = raw / folder_name
    report = ConversionReport(target)

    listing = converter.find_cases()
    report.notes = list(listing.notes)
    if not any(c.subset == "train" for c in listing.cases):
        if listing.problems:
            report.problems = list(listing.problems)
            raise BadCasesError(report)
        raise ConversionError(f"no labelled cases found in {converter.input_folder}; "
                              f"see dataset_conversion/README.md for the expected layout")
    manifest = {"converter": type(converter).__name__, "dataset_name": converter.dataset_name,
                "options": converter.options, "skip_bad": skip_bad,
                "sources": source_fingerprint(listing.cases, converter.input_folder)}
    if target.exists() and not overwrite:
        try:
            existing = json.loads((target / MANIFEST_NAME).read_text())
        except (OSError, ValueError):
            existing = None
        if existing is not None and {k: existing.get(k) for k in manifest} == json.loads(json.dumps(manifest)):
            report.up_to_date = True
            return report
        raise ConversionError(f"{target} already exists (from another conversion or other input); "
                              f"pass --overwrite to replace it")

    problems = list(listing.problems)
    results = _run_parallel(_validate_worker, [(converter, c) for c in listing.cases], num_processes,
                            "validating")
    valid = [case for case, problem in results if case is not None]
    problems += [problem for case, problem in results if problem is not None]
    report.problems = problems
    if problems and not skip_bad:
        raise BadCasesError(report)
    if not any(c.subset == "train" for c in valid):
        raise BadCasesError(report)

    _remove_stale_temporaries(target)

    def write(tmp_folder: str) -> None:
        tmp = Path(tmp_folder)
        # converters create the other folders they write into (imagesTs, labelsTs, ...) themselves
        (tmp / "imagesTr").mkdir(parents=True, exist_ok=True)
        (tmp / "labelsTr").mkdir(parents=True, exist_ok=True)
        results = _run_parallel(_convert_worker, [(converter, c, tmp) for c in valid], num_processes, "converting")
        written = [case for case, problem in results if case is not None]
        late_problems = [problem for case, problem in results if problem is not None]
        report.problems = problems + late_problems
        if late_problems and not skip_bad:
            raise BadCasesError(report)
        converted = {s: sorted(c.identifier for c in written if c.subset == s) for s in SUBSET_FOLDERS}
        if not converted["train"]:
            raise BadCasesError(report)
        report.converted = converted

        generate_dataset_json(str(tmp), dict(converter.channel_names), dict(converter.labels),
                              num_training_cases=len(converted["train"]), file_ending=FILE_ENDING,
                              dataset_name=folder_name, converted_by="nnunetv2_ext.dataset_conversion",
                              **converter.extra_json)
        splits = converter.splits(converted)
        if splits is not None:
            (tmp / SPLITS_NAME).write_text(json.dumps(splits, indent=1))
            report.notes.append(f"{SPLITS_NAME}: {len(splits)} folds with " +
                                "/".join(str(len(fold["val"])) for fold in splits) + " validation cases; "
                                "nnUNetv2_plan_and_preprocess copies it to nnUNet_preprocessed")
        converter.write_extras(tmp, converted, written)
        manifest["skipped"] = [[p.identifier, p.reason] for p in report.problems]
        manifest["notes"] = report.notes
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1))

    # a temporary sibling swapped in at the end: an interruption keeps an older dataset and leaves nothing behind
    write_folder_atomically(str(target), write)
    report.written = True
    return report


# ---- command line -------------------------------------------------------------------------------------------------

def make_parser(description: str) -> argparse.ArgumentParser:
    """Arguments every converter has (nnU-Net style: -d dataset id, -np processes)."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("-i", "--input", required=True, help="downloaded and extracted source dataset folder")
    parser.add_argument("-d", "--dataset-id", type=int, required=True,
                        help="nnU-Net dataset id; output goes to $nnUNet_raw/DatasetXXX_Name")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing target dataset that differs from this conversion")
    parser.add_argument("--skip-bad-cases", dest="skip_bad", action="store_true",
                        help="convert the good cases and list the bad ones instead of stopping")
    parser.add_argument("--skip-bad", dest="skip_bad", action="store_true", help=argparse.SUPPRESS)  # old name
    parser.add_argument("-np", "--num-processes", type=int, default=default_num_processes,
                        help="number of worker processes")
    parser.add_argument("--geometry-tolerance", type=float, default=0.1,
                        help="accepted image/label spacing and position difference, as a fraction of the voxel "
                             "spacing (must stay below 0.5 so nearest-neighbour resampling is exact)")
    return parser


def run_cli(make_converter: Callable[[argparse.Namespace], DatasetConverter], args: argparse.Namespace) -> int:
    """Runs a conversion from parsed arguments; prints the report; returns the exit code (0 ok, 1 bad cases,
    2 wrong arguments/input)."""
    previous = signal.signal(signal.SIGTERM, _terminate)  # a kill runs the clean-up of the temporary folder too
    try:
        converter = make_converter(args)
        report = run_conversion(converter, args.dataset_id, overwrite=args.overwrite, skip_bad=args.skip_bad,
                                num_processes=args.num_processes)
    except KeyboardInterrupt:
        print("Interrupted: nothing was written (the temporary folder was removed).", file=sys.stderr)
        return 130
    except ConversionError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2
    except BadCasesError as e:
        print(e.report.format(), file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(report.format())
    return 0


def _remove_stale_temporaries(target: Path) -> None:
    """Temporary folders of earlier conversions to ``target`` whose process no longer runs (killed with SIGKILL, a
    crash of the machine): ours by name, so removing them deletes nothing else."""
    for old in target.parent.glob(f".{target.name}.tmp-*"):
        pid = old.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _terminate(signum, frame):
    raise KeyboardInterrupt  # SIGTERM handled like Ctrl-C: finally blocks remove the temporary folder
