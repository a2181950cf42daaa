"""Deterministic synthetic abdominal-CT phantom written as an nnU-Net raw dataset.

Each case is a (z, y, x) volume in HU with a body, a spine, a liver-like and two kidney-like blobs, and one small
organ (the "pancreas", label 1, < 1 % of the voxels) whose positive slices form a contiguous block in the middle of
the volume, with negative slices at both ends, as in abdominal CT. A known subset of cases is *hard*:

- ``low_contrast``: the organ is barely brighter than the surrounding tissue;
- ``atypical_shape``: a thin curved tube instead of an ellipsoid;
- ``atypical_position``: the organ sits far from its usual place, next to the liver;
- ``similar_neighbour`` (with ``hard_kinds=ALL_HARD_KINDS``): the duodenum-like neighbour touches the organ and has
  the organ's intensity, so only shape and context separate them.

Realism options (off by default so that existing datasets stay bit-identical; :meth:`PhantomConfig.realistic` turns
them on, the README demo and the PNSS/HESS ablation use it): ``neighbour`` adds a duodenum-like tube along the
organ (a few voxels away, 30 HU darker) in every case, and ``bowel_loops`` adds that many small bowel-like blobs of
organ-like intensity anywhere in the abdomen, far slices included, as contrast-filled bowel is in real CT.

Options add what other features need: ``lesions`` (a tumour, label 2, inside the organ), ``ignore_label`` (an
"ignore" label painted over a band of slices), ``regions`` (BraTS-style region labels, needs ``lesions``).
``phantom_cases.json`` in the dataset folder records per case its kind, the organ voxel fraction and the positive
slice range, so tests and the demo know which cases are hard.

CLI::

    nnunetv2_ext_phantom -d 990 --num-cases 20 --num-test 5
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

HARD_KINDS = ("low_contrast", "atypical_shape", "atypical_position")
ALL_HARD_KINDS = HARD_KINDS + ("similar_neighbour",)


@dataclass
class PhantomConfig:
    num_cases: int = 20
    """Training cases (imagesTr/labelsTr)."""
    num_test: int = 0
    """Additional held-out cases written to imagesTs/labelsTs."""
    shape: Tuple[int, int, int] = (40, 64, 64)
    """(z, y, x) voxels; z is axis 0 of the arrays and the slice axis of nnU-Net's 2d configuration."""
    spacing: Tuple[float, float, float] = (3.0, 1.0, 1.0)
    """(z, y, x) spacing in mm."""
    seed: int = 0
    hard_every: int = 4
    """Every ``hard_every``-th case (index 1, 1 + hard_every, ...) is hard; its kind cycles through HARD_KINDS."""
    noise_hu: float = 12.0
    hard_kinds: Tuple[str, ...] = HARD_KINDS
    """Kinds the hard cases cycle through (ALL_HARD_KINDS adds ``similar_neighbour``, which needs ``neighbour``)."""
    neighbour: bool = False
    """A duodenum-like tube along the organ in every case."""
    bowel_loops: int = 0
    """Small bowel-like blobs of organ-like intensity placed anywhere in the abdomen."""
    lesions: bool = False
    ignore_label: bool = False
    regions: bool = False
    dataset_name: str = "Phantom"
    extra: Dict = field(default_factory=dict)

    def validate(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_\-]+", self.dataset_name or ""):  # no "/", "..": the folder stays in raw
            raise ValueError(f"the dataset name must be letters, digits, '_' or '-' (it becomes the folder "
                             f"Dataset<ID>_<name>), got {self.dataset_name!r}")
        if self.num_cases < 1 or self.num_test < 0:
            raise ValueError(f"num_cases must be >= 1 and num_test >= 0, got {self.num_cases}, {self.num_test}")
        if len(self.shape) != 3 or min(self.shape) < 16:
            raise ValueError(f"shape must be 3 values >= 16 (z, y, x), got {self.shape}")
        if self.regions and not self.lesions:
            raise ValueError("regions=True needs lesions=True (regions are organ+tumour and tumour)")
        if self.hard_every < 1:
            raise ValueError(f"hard_every must be >= 1, got {self.hard_every}")
        unknown = [k for k in self.hard_kinds if k not in ALL_HARD_KINDS]
        if unknown or not self.hard_kinds:
            raise ValueError(f"hard_kinds must be a non-empty subset of {ALL_HARD_KINDS}, got {self.hard_kinds}")
        if "similar_neighbour" in self.hard_kinds and not self.neighbour:
            raise ValueError("hard kind 'similar_neighbour' needs neighbour=True")
        if self.bowel_loops < 0:
            raise ValueError(f"bowel_loops must be >= 0, got {self.bowel_loops}")

    @classmethod
    def realistic(cls, **kwargs) -> "PhantomConfig":
        """All four hard kinds, the duodenum-like neighbour and 6 bowel loops (kwargs override)."""
        return cls(**{"hard_kinds": ALL_HARD_KINDS, "neighbour": True, "bowel_loops": 6, **kwargs})


def case_kind(index: int, hard_every: int, kinds=HARD_KINDS) -> str:
    if index % hard_every != 1 % hard_every:
        return "typical"
    return kinds[(index // hard_every) % len(kinds)]


def _ellipsoid(grid, center, radii) -> np.ndarray:
    zz, yy, xx = grid
    return ((zz - center[0]) / radii[0]) ** 2 + ((yy - center[1]) / radii[1]) ** 2 + \
        ((xx - center[2]) / radii[2]) ** 2 <= 1.0


def _smooth_noise(rng: np.random.Generator, shape, sigma_hu: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter
    n = gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma=(0.5, 0.8, 0.8))
    return n / (n.std() + 1e-6) * sigma_hu


def make_case(index: int, cfg: PhantomConfig) -> Tuple[np.ndarray, np.ndarray, dict]:
    """Returns (image HU float32 (z,y,x), label uint8 (z,y,x), info dict) for case ``index``; deterministic."""
    rng = np.random.default_rng([cfg.seed, index])
    nz, ny, nx = cfg.shape
    grid = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    zz, yy, xx = grid
    kind = case_kind(index, cfg.hard_every, cfg.hard_kinds)

    img = np.full(cfg.shape, -1000.0, dtype=np.float32)
    body = ((yy - ny * 0.5) / (ny * 0.42)) ** 2 + ((xx - nx * 0.5) / (nx * 0.46)) ** 2 <= 1.0
    img[body] = -80.0 + rng.normal(0, 5)  # fat
    soft = ((yy - ny * 0.5) / (ny * 0.34)) ** 2 + ((xx - nx * 0.5) / (nx * 0.38)) ** 2 <= 1.0
    img[soft] = 35.0 + rng.normal(0, 3)
    spine = ((yy - ny * 0.78) / (ny * 0.08)) ** 2 + ((xx - nx * 0.5) / (nx * 0.08)) ** 2 <= 1.0
    img[spine] = 450.0
    liver_c = (nz * 0.45, ny * 0.45, nx * 0.27)
    liver = _ellipsoid(grid, liver_c, (nz * 0.45, ny * 0.2, nx * 0.14))
    img[liver] = 65.0 + rng.normal(0, 3)
    for side in (0.3, 0.7):
        kid = _ellipsoid(grid, (nz * 0.55, ny * 0.62, nx * side), (nz * 0.2, ny * 0.07, nx * 0.06))
        img[kid] = 150.0

    # the small organ: usual place is right of centre, in front of the spine
    zc = nz * 0.5 + rng.uniform(-2, 2)
    center = np.array([zc, ny * (0.52 + rng.uniform(-0.03, 0.03)), nx * (0.58 + rng.uniform(-0.04, 0.04))])
    rz, ry, rx = nz * 0.12, ny * 0.075, nx * 0.13
    organ_hu = 105.0 + rng.normal(0, 4)
    if kind == "atypical_position":
        center = np.array([zc, ny * 0.38, nx * 0.42])
    if kind == "atypical_shape":
        # thin banana: a tube of radius ~1.6 voxels along a curve in (y, x), spanning the same z block
        t = np.linspace(-1, 1, 200)
        curve = np.stack([zc + t * rz, center[1] + 6 * t ** 2 - 3, center[2] + t * rx * 1.3], 1)
        organ = np.zeros(cfg.shape, bool)
        for p in curve:
            organ |= ((zz - p[0]) / 1.2) ** 2 + ((yy - p[1]) / 1.6) ** 2 + ((xx - p[2]) / 1.6) ** 2 <= 1.0
    else:
        organ = _ellipsoid(grid, center, (rz, ry, rx))
    if kind == "low_contrast":
        organ_hu = 52.0
    if cfg.neighbour or cfg.bowel_loops:  # a separate stream: the draws above stay those of the plain phantom
        _add_neighbours(img, grid, organ, center, (rz, ry, rx), organ_hu, soft, kind, cfg,
                        np.random.default_rng([cfg.seed, index, 1]))
    img[organ] = organ_hu
    img += _smooth_noise(rng, cfg.shape, cfg.noise_hu)
    img[~body] = -1000.0 + rng.normal(0, 5, size=int((~body).sum()))

    label = organ.astype(np.uint8)
    if cfg.lesions:
        # a tumour inside the organ, darker than the organ (hypodense, as pancreatic tumours are)
        coords = np.argwhere(organ)
        c = coords[rng.integers(len(coords))] if kind == "atypical_shape" else \
            np.round(center + rng.uniform(-1.5, 1.5, 3)).astype(int)
        lesion = _ellipsoid(grid, c, (max(rz * 0.45, 1.5), max(ry * 0.45, 1.5), max(rx * 0.35, 1.5))) & organ
        img[lesion] = organ_hu - 45.0 + rng.normal(0, 3)
        label[lesion] = 2
    if cfg.ignore_label:
        ignore_value = 3 if cfg.lesions else 2
        band = (zz < 3) & body  # an unannotated band at the bottom of the scan
        label[band & (label == 0)] = ignore_value

    pos = np.flatnonzero(organ.any(axis=(1, 2)))
    info = {
        "index": index,
        "kind": kind,
        "hard": kind != "typical",
        "organ_voxel_fraction": float(organ.mean()),
        "positive_slices": [int(pos.min()), int(pos.max())] if len(pos) else None,
        "num_slices": nz,
    }
    return img.astype(np.float32), label, info


def _add_neighbours(img, grid, organ, center, radii, organ_hu, soft, kind, cfg, rng) -> None:
    """Paints the duodenum-like neighbour and the bowel loops (organ voxels are painted over them afterwards)."""
    zz, yy, xx = grid
    nz, ny, nx = cfg.shape
    rz, ry, rx = radii
    free = soft & (img < 60)  # plain soft tissue: liver, kidneys and spine are never painted over
    near = organ.copy()
    if cfg.neighbour:
        # a tube bending around the organ's lateral end, 2 voxels away (touching for 'similar_neighbour')
        touching = kind == "similar_neighbour"
        gap = 0.0 if touching else 2.5
        t = np.linspace(-1, 1, 120)
        angle = t * 1.2
        cy, cx = center[1], center[2] + rx * 0.55
        reach_y, reach_x = ry + gap + 2.0, rx * 0.45 + gap + 2.0
        curve = np.stack([center[0] + t * rz * 0.9, cy + reach_y * np.sin(angle), cx + reach_x * np.cos(angle)], 1)
        tube = np.zeros(cfg.shape, bool)
        for p in curve:
            tube |= ((zz - p[0]) / 1.5) ** 2 + ((yy - p[1]) / 2.0) ** 2 + ((xx - p[2]) / 2.0) ** 2 <= 1.0
        tube &= free
        img[tube] = organ_hu + rng.normal(0, 2) if touching else organ_hu - 30.0 + rng.normal(0, 3)
        near |= tube
    from scipy.ndimage import binary_dilation
    keep_out = binary_dilation(near, iterations=3)
    placed = 0
    for _ in range(50 * cfg.bowel_loops):
        if placed == cfg.bowel_loops:
            break
        c = np.array([rng.uniform(1, nz - 2), rng.uniform(0.25, 0.75) * ny, rng.uniform(0.2, 0.8) * nx])
        blob = _ellipsoid(grid, c, (rng.uniform(1.2, 2.0), rng.uniform(1.8, 3.2), rng.uniform(1.8, 3.2)))
        if not blob.any() or (blob & keep_out).any() or not free[tuple(np.round(c).astype(int))]:
            continue
        img[blob & free] = organ_hu - 10.0 + rng.normal(0, 8)
        keep_out |= blob
        placed += 1


def _labels_json(cfg: PhantomConfig) -> Tuple[dict, Optional[list]]:
    if cfg.regions:
        labels = {"background": 0, "organ_and_tumour": [1, 2], "tumour": 2}
        order = [1, 2]
    else:
        labels = {"background": 0, "organ": 1}
        if cfg.lesions:
            labels["tumour"] = 2
        order = None
    if cfg.ignore_label:
        labels["ignore"] = 3 if cfg.lesions else 2
    return labels, order


def write_phantom_dataset(dataset_id: int, cfg: PhantomConfig, raw_folder: Optional[str] = None,
                          overwrite: bool = False) -> str:
    """Writes ``Dataset{id:03d}_{name}`` into ``raw_folder`` (default: $nnUNet_raw); returns its path."""
    import SimpleITK as sitk
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    cfg.validate()
    raw_folder = raw_folder or os.environ.get("nnUNet_raw")
    if not raw_folder:
        raise RuntimeError("nnUNet_raw is not set and no raw folder was given")
    out = os.path.join(raw_folder, f"Dataset{dataset_id:03d}_{cfg.dataset_name}")
    if os.path.exists(out):
        if not overwrite:
            raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
        shutil.rmtree(out)
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for sub in ("imagesTr", "labelsTr") + (("imagesTs", "labelsTs") if cfg.num_test else ()):
        os.makedirs(os.path.join(tmp, sub))

    infos: List[dict] = []
    for i in range(cfg.num_cases + cfg.num_test):
        img, lab, info = make_case(i, cfg)
        split = "Tr" if i < cfg.num_cases else "Ts"
        name = f"case_{i:03d}"
        info.update(name=name, split="train" if split == "Tr" else "test")
        infos.append(info)
        for arr, sub, suffix, dtype in ((img, "images", "_0000", np.int16), (lab, "labels", "", np.uint8)):
            itk = sitk.GetImageFromArray(arr.astype(dtype))
            itk.SetSpacing(tuple(float(s) for s in cfg.spacing[::-1]))
            sitk.WriteImage(itk, os.path.join(tmp, sub + split, f"{name}{suffix}.nii.gz"), True)

    labels, order = _labels_json(cfg)
    kwargs = {"regions_class_order": order} if order else {}
    generate_dataset_json(tmp, {0: "CT"}, labels, cfg.num_cases, ".nii.gz", dataset_name=cfg.dataset_name,
                          description="nnunetv2_ext synthetic CT phantom (deterministic)", **kwargs)
    with open(os.path.join(tmp, "phantom_cases.json"), "w", encoding="utf-8") as f:
        json.dump({"config": asdict(cfg), "cases": infos}, f, indent=1)
    os.rename(tmp, out)
    return out


def main(argv=None) -> int:
    """``nnUNetv2_ext_phantom``: bad arguments, a missing raw folder or an existing dataset (without --overwrite) end
    with a message and exit code 2 before anything is written."""
    import sys

    p = argparse.ArgumentParser(prog="nnUNetv2_ext_phantom",
                                description="Write the deterministic synthetic CT phantom as an nnU-Net raw dataset "
                                            "Dataset<ID>_<name> (into $nnUNet_raw).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-d", "--dataset-id", type=int, required=True, help="nnU-Net dataset id (1-999)")
    p.add_argument("--name", default="Phantom", help="dataset name (folder Dataset<ID>_<name>)")
    p.add_argument("--num-cases", type=int, default=20, help="training cases (imagesTr/labelsTr)")
    p.add_argument("--num-test", type=int, default=0, help="held-out test cases (imagesTs/labelsTs)")
    p.add_argument("--shape", type=int, nargs=3, default=(40, 64, 64), metavar=("Z", "Y", "X"),
                   help="volume size in voxels (each >= 16)")
    p.add_argument("--spacing", type=float, nargs=3, default=(3.0, 1.0, 1.0), metavar=("Z", "Y", "X"),
                   help="voxel spacing in mm")
    p.add_argument("--seed", type=int, default=0, help="random seed (the dataset is deterministic given it)")
    p.add_argument("--hard-every", type=int, default=4,
                   help="every n-th case is hard (low contrast, atypical shape or position)")
    p.add_argument("--lesions", action="store_true", help="add a tumour (label 2) inside the organ")
    p.add_argument("--ignore-label", action="store_true", help="paint an 'ignore' band over unannotated slices")
    p.add_argument("--regions", action="store_true", help="BraTS-style regions (needs --lesions)")
    p.add_argument("--raw-folder", default=None, help="where to write the dataset (default: $nnUNet_raw)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset of the same id and name")
    a = p.parse_args(argv)
    raw_folder = a.raw_folder or os.environ.get("nnUNet_raw")
    try:
        if not 1 <= a.dataset_id <= 999:
            raise ValueError(f"-d must be a dataset id in 1..999, got {a.dataset_id}")
        if not raw_folder:
            raise ValueError("nnUNet_raw is not set and no --raw-folder was given (see nnU-Net's "
                             "documentation/set_environment_variables.md)")
        if not os.path.isdir(raw_folder):
            raise ValueError(f"raw folder {raw_folder} does not exist")
        cfg = PhantomConfig(num_cases=a.num_cases, num_test=a.num_test, shape=tuple(a.shape),
                            spacing=tuple(a.spacing), seed=a.seed, hard_every=a.hard_every, lesions=a.lesions,
                            ignore_label=a.ignore_label, regions=a.regions, dataset_name=a.name)
        cfg.validate()
        if min(a.spacing) <= 0:
            raise ValueError(f"--spacing must be > 0, got {a.spacing}")
        target = f"Dataset{a.dataset_id:03d}_{a.name}"
        others = sorted(n for n in os.listdir(raw_folder)
                        if n.startswith(f"Dataset{a.dataset_id:03d}_") and n != target and not n.endswith(".tmp"))
        if others:
            raise ValueError(f"dataset id {a.dataset_id} is already used by {others} in {raw_folder}; choose another -d")
        if os.path.exists(os.path.join(raw_folder, target)) and not a.overwrite:
            raise ValueError(f"{os.path.join(raw_folder, target)} exists; pass --overwrite to replace it")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = write_phantom_dataset(a.dataset_id, cfg, raw_folder, a.overwrite)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
