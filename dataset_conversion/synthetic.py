"""Small synthetic source datasets in the original layouts (NIH Pancreas-CT, LiTS, MSD, FLARE22).

Used by the tests and the benchmark, and handy to try a converter without downloading anything. Volumes are a
water cylinder (0 HU) in air (-1000 HU) with one or more ellipsoid "organs" (label k at 40 + 10 k HU) and noise.
Only the layouts and geometry conventions matter here, not anatomy.
"""
import datetime
import json
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

CT_SPACING = (0.8, 0.8, 2.5)  # x, y, z in mm


def phantom(shape_zyx: Tuple[int, int, int], num_labels: int, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """(HU image int16, label uint8) arrays in numpy (z, y, x) order; label values within 0..num_labels."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape_zyx], indexing="ij")
    image = np.where(y ** 2 + x ** 2 < 0.8, 0.0, -1000.0)
    label = np.zeros(shape_zyx, dtype=np.uint8)
    for k in range(1, num_labels + 1):
        centre = rng.uniform(-0.4, 0.4, 3)
        radius = rng.uniform(0.15, 0.3, 3)
        inside = ((z - centre[0]) / radius[0]) ** 2 + ((y - centre[1]) / radius[1]) ** 2 + \
                 ((x - centre[2]) / radius[2]) ** 2 < 1
        label[inside] = k
        image[inside] = 40 + 10 * k
    image += rng.normal(0, 10, shape_zyx)
    return image.astype(np.int16), label


def to_image(array: np.ndarray, spacing=CT_SPACING, origin=(-100.0, -120.0, -300.0)) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    return image


def flipped_y(image: sitk.Image) -> sitk.Image:
    """The same physical image stored with its y index axis reversed (as the NIH Pancreas-CT labels are)."""
    flipped = sitk.Flip(image, [False, True, False])  # sitk.Flip keeps the physical positions of the voxels
    assert flipped.GetDirection()[4] < 0
    return flipped


def write_dicom_series(image: sitk.Image, folder: Path, series_uid: Optional[str] = None,
                       study_uid: str = "1.2.826.0.1.3680043.2.1125.1") -> None:
    """One CT DICOM file per axial slice (``1-001.dcm`` ... as TCIA names them), int16 HU, SimpleITK writer."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or f"1.2.826.0.1.3680043.2.1125.{abs(hash(str(folder))) % 10 ** 12}"
    now = datetime.datetime(2020, 1, 1)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = image.GetDirection()
    common = {"0008|0060": "CT", "0020|000d": study_uid, "0020|000e": series_uid,
              "0008|0020": now.strftime("%Y%m%d"), "0008|0030": now.strftime("%H%M%S"),
              "0020|0037": "\\".join(f"{v:.6f}" for v in (direction[0], direction[3], direction[6],
                                                          direction[1], direction[4], direction[7])),
              "0028|1050": "40", "0028|1051": "400"}
    for i in range(image.GetDepth()):
        slice_image = image[:, :, i]
        for tag, value in common.items():
            slice_image.SetMetaData(tag, value)
        position = image.TransformIndexToPhysicalPoint((0, 0, i))
        slice_image.SetMetaData("0020|0032", "\\".join(f"{v:.6f}" for v in position))
        slice_image.SetMetaData("0020|0013", str(i + 1))
        slice_image.SetMetaData("0008|0018", f"{series_uid}.{i + 1}")
        slice_image.SetMetaData("0018|0050", f"{image.GetSpacing()[2]:.4f}")
        writer.SetFileName(str(folder / f"1-{i + 1:03d}.dcm"))
        writer.Execute(slice_image)


def make_nih_pancreas(root: Path, case_numbers: Sequence[int] = (1, 2, 3), shape_zyx=(16, 48, 40),
                      withdrawn: Sequence[int] = (), seed: int = 0) -> Tuple[Path, Path]:
    """TCIA layout: ``root/Pancreas-CT/PANCREAS_0001/<study>/<series>/1-001.dcm`` and
    ``root/TCIA_pancreas_labels-02-05-2017/label0001.nii.gz`` (label y-flipped relative to the series).
    ``withdrawn`` numbers get a label file and an empty patient folder (as PANCREAS_0025/0070 on TCIA today).
    Returns (dicom root, labels folder)."""
    dicom_root, labels = root / "Pancreas-CT", root / "TCIA_pancreas_labels-02-05-2017"
    labels.mkdir(parents=True, exist_ok=True)
    for n in list(case_numbers) + list(withdrawn):
        image_array, label_array = phantom(shape_zyx, 1, seed + n)
        label = to_image(label_array)
        sitk.WriteImage(flipped_y(label), str(labels / f"label{n:04d}.nii.gz"))
        patient = dicom_root / f"PANCREAS_{n:04d}"
        if n in withdrawn:
            patient.mkdir(parents=True, exist_ok=True)
            continue
        write_dicom_series(to_image(image_array), patient / f"11-24-2015-PANCREAS{n:04d}-Pancreas-{n}" /
                           f"Pancreas-{n}", study_uid=f"1.2.826.0.1.3680043.2.1125.7.{n}")
    return dicom_root, labels


def make_lits(root: Path, case_numbers: Sequence[int] = (0, 1, 2), shape_zyx=(12, 40, 40), seed: int = 0) -> Path:
    """LiTS layout: ``Training Batch 1/volume-N.nii`` and ``segmentation-N.nii`` (1 liver, 2 tumour)."""
    folder = root / "Training Batch 1"
    folder.mkdir(parents=True, exist_ok=True)
    for n in case_numbers:
        image_array, label_array = phantom(shape_zyx, 2, seed + n)
        sitk.WriteImage(to_image(image_array), str(folder / f"volume-{n}.nii"))
        sitk.WriteImage(to_image(label_array), str(folder / f"segmentation-{n}.nii"))
    return root


MSD_TASKS: Dict[str, dict] = {
    "Task01_BrainTumour": {"modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
                           "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor",
                                      "3": "enhancing tumour"}, "prefix": "BRATS"},
    "Task03_Liver": {"modality": {"0": "CT"}, "labels": {"0": "background", "1": "liver", "2": "cancer"},
                     "prefix": "liver"},
    "Task07_Pancreas": {"modality": {"0": "CT"}, "labels": {"0": "background", "1": "pancreas", "2": "cancer"},
                        "prefix": "pancreas"},
    "Task09_Spleen": {"modality": {"0": "CT"}, "labels": {"0": "background", "1": "spleen"}, "prefix": "spleen"},
}


def make_msd(root: Path, task: str, case_numbers: Sequence[int] = (1, 2, 3), test_numbers: Sequence[int] = (4,),
             shape_zyx=(12, 32, 32), seed: int = 0) -> Path:
    """MSD layout: ``TaskXX_Name/{imagesTr,labelsTr,imagesTs}/prefix_NNN.nii.gz`` + dataset.json; multi-modal
    tasks store one 4D file per case (channel last in ITK order)."""
    spec = MSD_TASKS[task]
    folder = root / task
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    num_channels, num_labels = len(spec["modality"]), len(spec["labels"]) - 1

    def image_for(n):
        image_array, label_array = phantom(shape_zyx, num_labels, seed + n)
        if num_channels == 1:
            return to_image(image_array), to_image(label_array)
        channels = [to_image((image_array + 100 * c).astype(np.int16)) for c in range(num_channels)]
        return sitk.JoinSeries(channels), to_image(label_array)

    training = []
    for n in case_numbers:
        image, label = image_for(n)
        name = f"{spec['prefix']}_{n:03d}.nii.gz"
        sitk.WriteImage(image, str(folder / "imagesTr" / name))
        sitk.WriteImage(label, str(folder / "labelsTr" / name))
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    for n in test_numbers:
        name = f"{spec['prefix']}_{n:03d}.nii.gz"
        sitk.WriteImage(image_for(n)[0], str(folder / "imagesTs" / name))
    (folder / "dataset.json").write_text(json.dumps({
        "name": task.split("_")[1], "tensorImageSize": "4D" if num_channels > 1 else "3D",
        "modality": spec["modality"], "labels": spec["labels"], "numTraining": len(training),
        "numTest": len(test_numbers), "training": training,
        "test": [f"./imagesTs/{spec['prefix']}_{n:03d}.nii.gz" for n in test_numbers]}, indent=1))
    return folder


def make_flare22(root: Path, labeled: Sequence[int] = (1, 2), unlabeled: Sequence[int] = (1, 2, 3),
                 validation: Sequence[int] = (1,), shape_zyx=(12, 32, 32), seed: int = 0) -> Path:
    """FLARE22 layout: ``Training/FLARE22_LabeledCase50/{images/FLARE22_Tr_0001_0000.nii.gz,
    labels/FLARE22_Tr_0001.nii.gz}``, ``Training/FLARE22_UnlabeledCase1-1000/Case_00001_0000.nii.gz``,
    ``Validation/FLARE22_Ts_0001_0000.nii.gz``; labels 1..13."""
    labeled_dir = root / "Training" / "FLARE22_LabeledCase50"
    unlabeled_dir = root / "Training" / "FLARE22_UnlabeledCase1-1000"
    validation_dir = root / "Validation"
    for d in (labeled_dir / "images", labeled_dir / "labels", unlabeled_dir, validation_dir):
        d.mkdir(parents=True, exist_ok=True)
    for n in labeled:
        image_array, label_array = phantom(shape_zyx, 13, seed + n)
        sitk.WriteImage(to_image(image_array), str(labeled_dir / "images" / f"FLARE22_Tr_{n:04d}_0000.nii.gz"))
        sitk.WriteImage(to_image(label_array), str(labeled_dir / "labels" / f"FLARE22_Tr_{n:04d}.nii.gz"))
    for n in unlabeled:
        sitk.WriteImage(to_image(phantom(shape_zyx, 3, seed + 100 + n)[0]),
                        str(unlabeled_dir / f"Case_{n:05d}_0000.nii.gz"))
    for n in validation:
        sitk.WriteImage(to_image(phantom(shape_zyx, 3, seed + 200 + n)[0]),
                        str(validation_dir / f"FLARE22_Ts_{n:04d}_0000.nii.gz"))
    return root
