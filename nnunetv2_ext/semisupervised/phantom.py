"""A semi-supervised phantom: few labelled and more unlabelled cases, written with the public API of
:mod:`nnunetv2_ext.phantom` (the generator itself is unchanged).

``write_semisupervised_phantom`` writes the phantom with ``num_labelled + num_unlabelled`` training cases (and
``num_test`` held-out cases), then moves the images of the last ``num_unlabelled`` training cases to
``imagesUnlabeled/`` (where the FLARE22 converter puts unlabelled CT, and where :mod:`.unlabelled` and the
self-training command look) and their labels to ``labelsUnlabeled_reference/``: nnU-Net never reads that folder; it
is there so that the evidence can measure how good the pseudo-labels really were. ``dataset.json``'s numTraining is
updated and ``semisupervised_phantom.json`` lists the three groups. Hard cases (every ``hard_every``-th) fall into
every group, as in real data.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Optional

from nnunetv2_ext.phantom import PhantomConfig, write_phantom_dataset
from nnunetv2_ext.semisupervised.unlabelled import UNLABELLED_IMAGES

REFERENCE_FOLDER = "labelsUnlabeled_reference"
SPLIT_FILE = "semisupervised_phantom.json"


def write_semisupervised_phantom(dataset_id: int, num_labelled: int, num_unlabelled: int, num_test: int = 0,
                                 raw_folder: Optional[str] = None, overwrite: bool = False,
                                 dataset_name: str = "SemiPhantom", **phantom_options) -> str:
    """Returns the dataset folder; ``phantom_options`` go to :class:`PhantomConfig` (shape, seed, lesions, ...)."""
    if num_labelled < 1 or num_unlabelled < 1:
        raise ValueError(f"need at least one labelled and one unlabelled case, got {num_labelled}, {num_unlabelled}")
    cfg = PhantomConfig(num_cases=num_labelled + num_unlabelled, num_test=num_test, dataset_name=dataset_name,
                        **phantom_options)
    folder = write_phantom_dataset(dataset_id, cfg, raw_folder, overwrite)
    with open(os.path.join(folder, "dataset.json"), encoding="utf-8") as f:
        dataset_json = json.load(f)
    ending = dataset_json["file_ending"]
    os.makedirs(os.path.join(folder, UNLABELLED_IMAGES))
    os.makedirs(os.path.join(folder, REFERENCE_FOLDER))
    names = [f"case_{i:03d}" for i in range(num_labelled + num_unlabelled + num_test)]
    labelled, unlabelled, test = (names[:num_labelled], names[num_labelled:num_labelled + num_unlabelled],
                                  names[num_labelled + num_unlabelled:])
    for case in unlabelled:
        for channel in range(len(dataset_json["channel_names"])):
            image = f"{case}_{channel:04d}{ending}"
            shutil.move(os.path.join(folder, "imagesTr", image), os.path.join(folder, UNLABELLED_IMAGES, image))
        shutil.move(os.path.join(folder, "labelsTr", case + ending), os.path.join(folder, REFERENCE_FOLDER,
                                                                                   case + ending))
    dataset_json["numTraining"] = num_labelled
    with open(os.path.join(folder, "dataset.json"), "w", encoding="utf-8") as f:
        json.dump(dataset_json, f, indent=1)
    with open(os.path.join(folder, SPLIT_FILE), "w", encoding="utf-8") as f:
        json.dump({"labelled": labelled, "unlabelled": unlabelled, "test": test,
                   "unlabelled_reference": REFERENCE_FOLDER}, f, indent=1)
    return folder
