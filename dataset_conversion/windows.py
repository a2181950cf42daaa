"""Three-window CT input (Pham et al.'s pre-processing for FLARE22): the same CT written as several channels, each
clipped to a display window and scaled to [0, 1].

Window w = (level L, width W): channel = (clip(HU, L - W/2, L + W/2) - (L - W/2)) / W, float32 in [0, 1]
(SimpleITK's IntensityWindowing). Defaults (level/width in HU, the usual radiology display windows):

    abdomen (soft tissue)  L   40  W  400   ->  [-160,  240] HU
    chest (lung)           L -600  W 1500   ->  [-1350, 150] HU
    spine (bone)           L  400  W 1800   ->  [-500, 1300] HU

Matching ``dataset.json``: every windowed channel is named ``noNorm`` (nnU-Net's NoNormalization), because the
windowing already is the normalisation: a fixed map of HU to [0, 1], the same for every case; nnU-Net's CT
normalisation (dataset percentiles, z-score) would undo the saturation the windows are for. The windows themselves are
recorded in ``dataset.json`` under ``channel_windows``. Any trainer can use such a dataset.

Converters use :func:`add_window_arguments` / :func:`windows_from_args` for the command line and
:func:`write_windowed_channels` where they would otherwise write or copy the single CT channel.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

NO_NORMALIZATION = "noNorm"


@dataclass(frozen=True)
class Window:
    name: str
    level: float
    width: float

    def __post_init__(self):
        if not self.name or ":" in self.name:
            raise ValueError(f"window name must be non-empty without ':', got {self.name!r}")
        if not (math.isfinite(self.level) and math.isfinite(self.width) and self.width > 0):
            raise ValueError(f"window {self.name}: need a finite level and a width > 0, got level {self.level}, "
                             f"width {self.width}")

    @property
    def lower(self) -> float:
        return self.level - self.width / 2

    @property
    def upper(self) -> float:
        return self.level + self.width / 2

    def apply(self, hu: np.ndarray) -> np.ndarray:
        """The windowed channel of an HU array (float32 in [0, 1]); the reference for :func:`window_image`."""
        return ((np.clip(np.asarray(hu, dtype=np.float64), self.lower, self.upper) - self.lower) /
                self.width).astype(np.float32)

    def as_json(self) -> dict:
        return {"name": self.name, "level": self.level, "width": self.width,
                "hu_range": [self.lower, self.upper]}


DEFAULT_WINDOWS: Tuple[Window, ...] = (Window("abdomen", 40, 400), Window("chest", -600, 1500),
                                       Window("spine", 400, 1800))


def parse_window(text: str) -> Window:
    """'NAME:LEVEL:WIDTH' (HU), e.g. 'liver:60:160' (argparse type)."""
    parts = text.split(":")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"a window is NAME:LEVEL:WIDTH, e.g. abdomen:40:400; got {text!r}")
    try:
        return Window(parts[0], float(parts[1]), float(parts[2]))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def window_image(image: sitk.Image, window: Window) -> sitk.Image:
    """The windowed channel as a float32 image with the input's geometry."""
    return sitk.IntensityWindowing(sitk.Cast(image, sitk.sitkFloat32), windowMinimum=window.lower,
                                   windowMaximum=window.upper, outputMinimum=0.0, outputMaximum=1.0)


def write_windowed_channels(image: Union[str, Path, sitk.Image], folder: Union[str, Path], identifier: str,
                            windows: Sequence[Window], file_ending: str = ".nii.gz") -> list:
    """Writes ``folder/{identifier}_{i:04d}{file_ending}`` for window i; returns the paths."""
    if isinstance(image, (str, Path)):
        image = sitk.ReadImage(str(image))
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"{identifier}: windows need a single-channel CT image")
    paths = []
    for i, window in enumerate(windows):
        path = Path(folder) / f"{identifier}_{i:04d}{file_ending}"
        sitk.WriteImage(window_image(image, window), str(path), True)
        paths.append(path)
    return paths


def windowed_channel_names(windows: Sequence[Window]) -> Dict[int, str]:
    """dataset.json channel_names: ``noNorm`` for every window (module docstring)."""
    return {i: NO_NORMALIZATION for i in range(len(windows))}


def windows_json(windows: Sequence[Window]) -> dict:
    """Extra dataset.json entry recording the windows."""
    return {"channel_windows": {str(i): w.as_json() for i, w in enumerate(windows)}}


def add_window_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--three-windows", action="store_true",
                        help="write each CT as three channels: abdomen (L 40, W 400), chest (L -600, W 1500) and "
                             "spine (L 400, W 1800) windows scaled to [0, 1], channel names noNorm "
                             "(dataset_conversion/windows.py)")
    parser.add_argument("--window", type=parse_window, action="append", default=None, metavar="NAME:LEVEL:WIDTH",
                        help="a window in HU (repeat for several; replaces the three defaults; implies windowing)")


def windows_from_args(args: argparse.Namespace, parser: Optional[argparse.ArgumentParser] = None
                      ) -> Optional[Tuple[Window, ...]]:
    """The windows asked for (None: plain CT). Bad input: ``parser.error`` (exit code 2) or ValueError."""
    if args.window:
        names = [w.name for w in args.window]
        if len(set(names)) != len(names):
            message = f"window names must differ, got {names}"
            if parser is not None:
                parser.error(message)
            raise ValueError(message)
        return tuple(args.window)
    return DEFAULT_WINDOWS if args.three_windows else None
