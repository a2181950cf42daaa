"""Whole-case prediction for two-stage networks through nnU-Net's own predictor (``nnUNetv2_predict``, the validation
at the end of training, ``nnUNetPredictor`` in scripts): the one mechanism the cascade and coarse-to-fine share.

nnU-Net's predictor hands a network one sliding-window tile at a time, so a network cannot see the whole case - but
a two-stage method must: stage 1 runs over the whole case, the organ box is found on the whole slice / volume, and
stage 2 runs on that crop. This module gives such networks the case:

- A network that implements ``predict_case_logits(data, context) -> CasePrediction`` (``data`` (C, *S) = the
  preprocessed case exactly as nnU-Net's ``predict_sliding_window_return_logits`` receives it, ``context`` a
  :class:`CaseContext`) is a *case-level network*. It does no I/O: its :class:`CasePrediction` carries the logits
  (num_heads, *S), the lines to log and one JSON record, which this adapter logs (``context.log``) and appends to
  ``CasePrediction.log_name`` in the output folder.
- :func:`install_case_level_prediction` wraps two methods of ``nnUNetPredictor`` once per process (a trainer module
  of this package calls it at import, which nnU-Net does before it builds the network for prediction):
  ``predict_sliding_window_return_logits`` calls ``predict_case_logits`` for case-level networks, and
  ``predict_from_data_iterator`` declares each case (name, properties, output folder) on the network it predicts
  with (:func:`declare_case`), so the context names the case. Any other network goes through nnU-Net's original
  methods unchanged. The trainers' end-of-training validation declares its cases the same way
  (:func:`validation_dataset_declaring_cases`).
- :func:`sliding_window` / :func:`mirrored`: the tiling and test-time mirroring case-level networks use for their
  stages (nnU-Net's own tile steps, Gaussian weighting and padding).

The nnU-Net internals relied on here are pinned by ``tests/test_nnunet_adapters.py``.

Known limit: ``nnUNetv2_predict -npp 0 -nps 0`` (sequential mode) does not pass the case through
``predict_from_data_iterator``; the prediction is the same, the log names the case ``(unnamed)`` and there is no
output folder for the per-case records.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import torch

from nnunetv2_ext.nnunet_adapters.network import unwrap_network

_PATCHED_MARK = "__nnunetv2_ext_case_level__"
_CASE_ATTRIBUTE = "_nnunetv2_ext_case"


def is_case_level(network) -> bool:
    return callable(getattr(unwrap_network(network), "predict_case_logits", None))


@dataclass(frozen=True)
class DeclaredCase:
    """The case a network is about to predict, as the predictor (or the trainer's validation) knows it."""
    name: Optional[str] = None
    properties: Optional[dict] = None
    output_folder: Optional[str] = None
    log: Optional[Callable[[str], None]] = None


def declare_case(network, case: Optional[DeclaredCase]) -> None:
    """Declares (or, with None, clears) the case the next whole-case prediction of ``network`` is for. Kept on the
    (unwrapped) network itself, so two predictors in one process do not mix their cases."""
    setattr(unwrap_network(network), _CASE_ATTRIBUTE, case)


def declared_case(network) -> DeclaredCase:
    return getattr(unwrap_network(network), _CASE_ATTRIBUTE, None) or DeclaredCase()


@contextlib.contextmanager
def case_declared(network, case: DeclaredCase):
    """``declare_case`` for the duration of a block (the previous declaration comes back afterwards)."""
    previous = getattr(unwrap_network(network), _CASE_ATTRIBUTE, None)
    declare_case(network, case)
    try:
        yield
    finally:
        declare_case(network, previous)


@dataclass
class CasePrediction:
    """What a case-level network returns: ``logits`` (num_heads, *S); ``lines`` to log (``context.log``);
    ``record``, one JSON object appended to ``log_name`` in the output folder (nothing without a folder)."""
    logits: torch.Tensor
    record: Optional[dict] = None
    lines: Sequence[str] = ()
    log_name: Optional[str] = None


def data_grid_spacing(properties: Optional[dict], plans_manager, configuration_manager) -> Optional[Tuple[float, ...]]:
    """Spacing (mm) of the preprocessed array nnU-Net predicts on, in its axis order (Z, Y, X after transposition):
    the configuration's spacing, with the case's own slice spacing first for 2d configurations."""
    target = [float(s) for s in configuration_manager.spacing]
    if len(target) == 3:
        return tuple(target)
    if properties is None or "spacing" not in properties:
        return None
    original = [float(properties["spacing"][i]) for i in plans_manager.transpose_forward]
    return (original[0], *target)


@dataclass
class CaseContext:
    """What a case-level network needs to know besides the data.

    Attributes: ``case`` (name or None), ``spacing`` (mm per voxel of ``data``'s spatial axes, or None), ``patch_size``
    (the configuration's), ``tile_step_size``, ``use_gaussian``, ``mirror_axes`` (spatial axes of the network input
    to mirror, None = no test-time mirroring), ``device``, ``output_folder`` (where the per-case log goes, or None),
    ``log`` (callable taking one line of text).
    """
    case: Optional[str]
    spacing: Optional[Tuple[float, ...]]
    patch_size: Tuple[int, ...]
    tile_step_size: float = 0.5
    use_gaussian: bool = True
    mirror_axes: Optional[Tuple[int, ...]] = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    output_folder: Optional[str] = None
    log: Callable[[str], None] = print

    @property
    def case_name(self) -> str:
        return self.case if self.case is not None else "(unnamed)"

    @classmethod
    def from_predictor(cls, predictor) -> "CaseContext":
        case = declared_case(predictor.network)
        mirror = tuple(predictor.allowed_mirroring_axes) if (
            predictor.use_mirroring and predictor.allowed_mirroring_axes is not None) else None
        return cls(case=case.name,
                   spacing=data_grid_spacing(case.properties, predictor.plans_manager,
                                             predictor.configuration_manager),
                   patch_size=tuple(int(p) for p in predictor.configuration_manager.patch_size),
                   tile_step_size=float(predictor.tile_step_size), use_gaussian=bool(predictor.use_gaussian),
                   mirror_axes=mirror, device=predictor.device, output_folder=case.output_folder,
                   log=case.log or print)


def finish_case(prediction: "CasePrediction | torch.Tensor", context: CaseContext) -> torch.Tensor:
    """Logs and writes what a case-level network returned; the logits."""
    if isinstance(prediction, torch.Tensor):
        return prediction
    for line in prediction.lines:
        (context.log or print)(line)
    if prediction.record is not None and prediction.log_name:
        write_case_record(context.output_folder, prediction.log_name, prediction.record)
    return prediction.logits


def validation_dataset_declaring_cases(dataset_class, network, folder: str, log: Callable[[str], None]):
    """A subclass of nnU-Net's dataset class whose ``load_case`` declares each case on ``network`` (nnU-Net's
    ``perform_actual_validation`` loads a case, then predicts it with ``predict_sliding_window_return_logits``, so
    this is where the validation names its cases). Records go to ``folder``, lines to ``log``."""

    class DeclaringDataset(dataset_class):
        def load_case(self, identifier):
            loaded = super().load_case(identifier)
            declare_case(network, DeclaredCase(identifier, loaded[3], folder, log))
            return loaded
    DeclaringDataset.__name__ = f"{dataset_class.__name__}DeclaringCases"
    return DeclaringDataset


def mirrored(fn: Callable[[torch.Tensor], torch.Tensor], mirror_axes: Optional[Sequence[int]]
             ) -> Callable[[torch.Tensor], torch.Tensor]:
    """``fn`` averaged over all mirrorings of the given spatial axes (nnU-Net's test-time augmentation: every
    non-empty combination of the axes plus the original)."""
    if not mirror_axes:
        return fn
    axes = [a + 2 for a in mirror_axes]
    combos = [c for i in range(len(axes)) for c in itertools.combinations(axes, i + 1)]

    def averaged(x: torch.Tensor) -> torch.Tensor:
        out = fn(x).float()
        for c in combos:
            out = out + torch.flip(fn(torch.flip(x, c)), c).float()
        return out / (len(combos) + 1)
    return averaged


def sliding_window(fn: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, tile_size: Sequence[int],
                   num_channels: int, step_size: float = 0.5, use_gaussian: bool = True) -> torch.Tensor:
    """Tiled prediction of ``image`` (C, *S) with ``fn`` ((1, C, *tile) -> (1, K, *tile)), nnU-Net style: the image
    is padded to at least ``tile_size``, tiles overlap by ``1 - step_size``, predictions are Gaussian-weighted and
    averaged. ``tile_size`` may have a leading 1 for 2d networks on a (C, Z, Y, X) case: ``fn`` then gets
    (1, C, 1, Y, X) tiles, one per slice and in-plane position. Returns (K, *S) float32 on the image's device."""
    from acvl_utils.cropping_and_padding.padding import pad_nd_image
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian, compute_steps_for_sliding_window

    tile_size = tuple(int(t) for t in tile_size)
    if len(tile_size) != image.ndim - 1:
        raise ValueError(f"tile size {tile_size} does not fit an image of shape {tuple(image.shape)}")
    data, revert = pad_nd_image(image, tile_size, "constant", {"value": 0}, True, None)
    steps = compute_steps_for_sliding_window(data.shape[1:], tile_size, step_size)
    # a tile of size 1 (the slice axis of 2d tiles) visits every position once, as nnU-Net's predictor does for 2d
    # configurations (with the step formula, every slice would be predicted about twice)
    steps = [list(range(n)) if t == 1 else s for s, t, n in zip(steps, tile_size, data.shape[1:])]
    weight_map = compute_gaussian(tile_size, sigma_scale=1. / 8, value_scaling_factor=10, dtype=torch.float32,
                                  device=data.device) if use_gaussian else \
        torch.ones(tile_size, device=data.device)
    out = torch.zeros((num_channels, *data.shape[1:]), dtype=torch.float32, device=data.device)
    weights = torch.zeros(data.shape[1:], dtype=torch.float32, device=data.device)
    for corner in itertools.product(*steps):
        sl = tuple(slice(int(c), int(c) + t) for c, t in zip(corner, tile_size))
        prediction = fn(data[(slice(None), *sl)][None])[0].float()
        out[(slice(None), *sl)] += prediction * weight_map
        weights[sl] += weight_map
    out /= weights
    return out[(slice(None), *revert[1:])]


def write_case_record(output_folder: Optional[str], filename: str, record: dict) -> Optional[str]:
    """Appends ``record`` (plus a timestamp) as one JSON line to ``output_folder/filename``; returns the path (None
    without an output folder). Appending keeps parallel ``-num_parts`` runs into one folder safe."""
    if not output_folder:
        return None
    os.makedirs(output_folder, exist_ok=True)
    path = os.path.join(output_folder, filename)
    line = json.dumps({**record, "time": time.strftime("%Y-%m-%d %H:%M:%S")}, default=_json_default)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
    return path


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (tuple, set, np.ndarray)):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")


def install_case_level_prediction() -> None:
    """Wraps ``nnUNetPredictor.predict_sliding_window_return_logits`` and ``predict_from_data_iterator`` (once per
    process; idempotent). Networks without ``predict_case_logits`` are predicted by nnU-Net's original code."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    if getattr(nnUNetPredictor.predict_sliding_window_return_logits, _PATCHED_MARK, False):
        return

    original_window = nnUNetPredictor.predict_sliding_window_return_logits
    original_iterator = nnUNetPredictor.predict_from_data_iterator

    def predict_sliding_window_return_logits(self, input_image: torch.Tensor):
        if not is_case_level(self.network):
            return original_window(self, input_image)
        if not isinstance(input_image, torch.Tensor) or input_image.ndim != 4:
            raise ValueError("input_image must be a 4D torch.Tensor (c, x, y, z)")
        self.network = self.network.to(self.device)
        self.network.eval()
        context = CaseContext.from_predictor(self)
        autocast = torch.autocast(self.device.type, enabled=True) if self.device.type == "cuda" else \
            contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            prediction = unwrap_network(self.network).predict_case_logits(input_image.to(self.device), context)
        return finish_case(prediction, context)

    def predict_from_data_iterator(self, data_iterator, *args, **kwargs):
        if not is_case_level(self.network):
            return original_iterator(self, data_iterator, *args, **kwargs)

        def tracked(iterator):
            try:
                for item in iterator:
                    ofile = item.get("ofile")
                    declare_case(self.network, DeclaredCase(
                        os.path.basename(ofile) if ofile else None, item.get("data_properties"),
                        os.path.dirname(os.path.abspath(ofile)) if ofile else None))
                    yield item
            finally:
                declare_case(self.network, None)
        try:
            return original_iterator(self, tracked(data_iterator), *args, **kwargs)
        finally:
            finish = getattr(data_iterator, "_finish", None)
            if callable(finish):
                finish()

    predict_sliding_window_return_logits.__wrapped__ = original_window
    predict_from_data_iterator.__wrapped__ = original_iterator
    setattr(predict_sliding_window_return_logits, _PATCHED_MARK, True)
    nnUNetPredictor.predict_sliding_window_return_logits = predict_sliding_window_return_logits
    nnUNetPredictor.predict_from_data_iterator = predict_from_data_iterator
