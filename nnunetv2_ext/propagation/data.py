"""Data of the propagation network: volume normalisation and training clips from an nnU-Net raw dataset.

- :func:`normalise_volume`: per channel, clip to the volume's 0.5-99.5 percentiles, then zero mean and unit SD over
  the volume. The same function at training and at application (stored in the model as :data:`NORMALISATION`); the
  reference model keeps nnU-Net's own preprocessing.
- :func:`read_labelled_volumes`: the raw dataset's ``imagesTr``/``labelsTr`` through nnU-Net's reader of that
  dataset (dataset.json), one label as a binary mask.
- :class:`ClipSampler`: STCN's training clips, three slices in one direction with random gaps of 1..``max_skip``,
  the first slice showing the organ; random in-plane crop of ``patch`` (around the organ when it fits) and flips.
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence, Tuple

import numpy as np

NORMALISATION = "volume_percentile_zscore"


def normalise_volume(image: np.ndarray) -> np.ndarray:
    """(C, Z, H, W) -> float32, each channel clipped to its 0.5/99.5 percentiles, zero mean, unit SD."""
    out = np.empty(image.shape, np.float32)
    for c in range(image.shape[0]):
        x = image[c].astype(np.float32)
        lo, hi = np.percentile(x, (0.5, 99.5))
        x = np.clip(x, lo, hi)
        sd = float(x.std())
        out[c] = (x - float(x.mean())) / (sd if sd > 0 else 1.0)
    return out


def label_value(dataset_json: dict, label: str):
    """The value (or region values) of a foreground label name of dataset.json; ValueError naming the choices."""
    labels = dataset_json.get("labels", {})
    names = [k for k in labels if k not in ("background", "ignore")]
    if label not in names:
        raise ValueError(f"label {label!r} is not a foreground label of the dataset ({names})")
    return labels[label]


def dataset_reader(dataset_json: dict, example_file: str):
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    return determine_reader_writer_from_dataset_json(dataset_json, example_file, verbose=False)()


def case_image_files(folder: str, case: str, num_channels: int, ending: str) -> List[str]:
    files = [os.path.join(folder, f"{case}_{c:04d}{ending}") for c in range(num_channels)]
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise FileNotFoundError(f"case {case}: image file(s) missing: {missing}")
    return files


def read_labelled_volumes(raw_dataset: str, dataset_json: dict, label: str
                          ) -> List[Tuple[str, np.ndarray, np.ndarray]]:
    """[(case, normalised image (C, Z, H, W), binary label (Z, H, W))] of every training case."""
    value = label_value(dataset_json, label)
    ending = dataset_json["file_ending"]
    channels = len(dataset_json["channel_names"])
    labels_dir, images_dir = os.path.join(raw_dataset, "labelsTr"), os.path.join(raw_dataset, "imagesTr")
    cases = sorted(f[:-len(ending)] for f in os.listdir(labels_dir) if f.endswith(ending))
    if not cases:
        raise ValueError(f"{labels_dir} holds no {ending} labels")
    reader = dataset_reader(dataset_json, os.path.join(labels_dir, cases[0] + ending))
    out = []
    for case in cases:
        image, _ = reader.read_images(case_image_files(images_dir, case, channels, ending))
        seg, _ = reader.read_seg(os.path.join(labels_dir, case + ending))
        if image.shape[1:] != seg.shape[1:]:
            raise ValueError(f"case {case}: image {image.shape[1:]} and label {seg.shape[1:]} differ in shape")
        if image.shape[1] < 2:
            raise ValueError(f"case {case}: {image.shape[1]} slice(s); propagation needs volumes")
        out.append((case, normalise_volume(image), np.isin(seg[0], np.atleast_1d(value))))
    return out


class ClipSampler:
    """Random training clips (module docstring). ``volumes``: output of :func:`read_labelled_volumes`."""

    def __init__(self, volumes: Sequence[Tuple[str, np.ndarray, np.ndarray]], patch: Sequence[int],
                 clip_length: int = 3, max_skip: int = 3, seed: Optional[int] = None):
        self.volumes = [v for v in volumes if v[2].any()]
        if not self.volumes:
            raise ValueError("no training case shows the label: nothing to learn the propagation from")
        self.patch = tuple(int(p) for p in patch)
        if len(self.patch) != 2 or any(p < 8 or p % 8 for p in self.patch):
            raise ValueError(f"patch must be two sizes, multiples of 8, got {patch}")
        if clip_length < 2 or max_skip < 1:
            raise ValueError(f"clip_length >= 2 and max_skip >= 1 needed, got {clip_length}, {max_skip}")
        self.clip_length, self.max_skip = clip_length, max_skip
        self.rng = np.random.default_rng(seed)

    def _crop_start(self, size: int, patch: int, centre: int) -> int:
        if size <= patch:
            return 0
        lo, hi = max(0, centre - patch + 1), min(size - patch, centre)
        return int(self.rng.integers(lo, hi + 1)) if hi >= lo else int(self.rng.integers(0, size - patch + 1))

    def clip(self) -> Tuple[np.ndarray, np.ndarray]:
        """frames (T, C, *patch), masks (T, 1, *patch)."""
        _, image, label = self.volumes[int(self.rng.integers(len(self.volumes)))]
        z_with = np.flatnonzero(label.any((1, 2)))
        z = int(self.rng.choice(z_with))
        direction = 1 if self.rng.random() < 0.5 else -1
        slices = [z]
        for _ in range(self.clip_length - 1):
            z = int(np.clip(z + direction * self.rng.integers(1, self.max_skip + 1), 0, label.shape[0] - 1))
            slices.append(z)
        ys, xs = np.nonzero(label[slices[0]])
        i = int(self.rng.integers(len(ys)))
        y0 = self._crop_start(label.shape[1], self.patch[0], int(ys[i]))
        x0 = self._crop_start(label.shape[2], self.patch[1], int(xs[i]))
        frames = np.zeros((self.clip_length, image.shape[0], *self.patch), np.float32)
        masks = np.zeros((self.clip_length, 1, *self.patch), np.float32)
        for t, s in enumerate(slices):
            im = image[:, s, y0:y0 + self.patch[0], x0:x0 + self.patch[1]]
            frames[t, :, :im.shape[1], :im.shape[2]] = im
            masks[t, 0, :im.shape[1], :im.shape[2]] = label[s, y0:y0 + self.patch[0], x0:x0 + self.patch[1]]
        for axis in (2, 3):
            if self.rng.random() < 0.5:
                frames, masks = np.flip(frames, axis), np.flip(masks, axis)
        return np.ascontiguousarray(frames), np.ascontiguousarray(masks)

    def batch(self, size: int) -> Tuple[np.ndarray, np.ndarray]:
        clips = [self.clip() for _ in range(size)]
        return np.stack([c[0] for c in clips]), np.stack([c[1] for c in clips])
