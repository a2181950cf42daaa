"""Coarse-to-fine segmentation with a saliency transformation between the stages (Liu, Duan, Zeng 2021, after RSTN,
Yu et al. 2018), as ONE network so that nnU-Net's training, validation and prediction call it like any network.

:class:`CoarseToFineNet` (binary: background / organ), input (B, C, *S) -> log-probabilities (B, 2, *S):

1. coarse stage (the plans' U-Net) on the whole input: organ probability ``P`` (softmax channel 1);
2. organ box: the bounding box of the mask ``P >= 0.5`` (in training steps 1-2: of the reference organ) grown by
   K voxels on each side (paper and RSTN: K = 20; training with probability 0.5 draws each side's margin from
   [0, 2K] instead, RSTN's ``update_margin``), then to a multiple of the fine stage's total stride;
3. saliency transformation (Eq. 9): ``I = F_S(P)`` (:class:`~nnunetv2_ext.two_stage.prior.SalientChangeModule`:
   ``1 + tanh(h(P))``, two small convolutions, starting at the identity), the fine input is the crop of ``X * I``
   concatenated with the crop of ``X`` (2C channels);
4. fine stage (the plans' U-Net with 2C input channels, or the MLN fine net :mod:`nnunetv2_ext.coarse_to_fine.mln`) on
   the crop; its log-probabilities are pasted back at full size, background (log-probabilities 0 / -fill) outside
   the box, as RSTN's ``uncrop``.

Training (``self.training``): one fine pass per sample, the box and the gradient path set by the current
:class:`~nnunetv2_ext.two_stage.steps.TrainingStep` of :data:`COARSE_TO_FINE_SCHEDULE` (the three-step optimisation:
S = reference boxes, stages separate; I = reference boxes, joint through F_S; J = predicted boxes, joint; a sample
whose coarse mask is empty falls back to its reference box, as RSTN). RSTN trains on organ slices only; nnU-Net
also samples slices without the organ, and there steps S and I use the coarse stage's own (false positive) box, so
that the fine stage learns to answer "no organ" in such a box, as it must at test time. A sample without any box
(no organ in the reference nor the prediction) skips the fine stage and is background.

Inference (``eval()``, :attr:`iterative_test` on): Algorithm 1 (:mod:`nnunetv2_ext.coarse_to_fine.iterative`) per input:
the fine stage is applied repeatedly, each round's prediction giving the next box and saliency map, until the RDSC of
successive masks reaches ``tol`` or ``T_max`` rounds; the records go to :attr:`iteration_log`. The network is a
case-level network (:mod:`nnunetv2_ext.nnunet_adapters.predictor`): :meth:`CoarseToFineNet.predict_case_logits` gets
each whole case from ``nnUNetv2_predict`` and the end-of-training validation, so the iteration records are grouped
and named by case, and each case's summary goes to ``coarse_to_fine_iterations.jsonl`` in the output folder.
:attr:`iterative_test` off: one fine pass with predicted boxes (the trainer's per-epoch validation loss).

The loss (Eq. 13) is in :mod:`nnunetv2_ext.coarse_to_fine.loss`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch
from torch import nn

from nnunetv2_ext.coarse_to_fine.iterative import IterationLog, StoppingRule, format_case, iterate_fine_stage
from nnunetv2_ext.coarse_to_fine.mln import MLNOutput
from nnunetv2_ext.nnunet_adapters.predictor import CaseContext, CasePrediction, mirrored, sliding_window
from nnunetv2_ext.two_stage.boxes import Box, bounding_box, expand_box, normalise_margin
from nnunetv2_ext.two_stage.crop import crop_with_padding, paste_crop
from nnunetv2_ext.two_stage.prior import SalientChangeModule
from nnunetv2_ext.two_stage.steps import STEP_I, STEP_J, STEP_S, StepSchedule, TrainingStep

# RSTN's reference code (training.py): S 10k, I 30k, J 40k of 80k iterations
RSTN_SEPARATE_FRACTION = 1 / 8
RSTN_JOINT_REFERENCE_FRACTION = 3 / 8
PAPER_CROP_MARGIN = 20
ITERATION_CASE_LOG = "coarse_to_fine_iterations.jsonl"
"""Per-case summaries of the iterative test, one JSON line per case, in the prediction's output folder."""


def coarse_to_fine_schedule(separate_fraction: float = RSTN_SEPARATE_FRACTION,
                            joint_reference_fraction: float = RSTN_JOINT_REFERENCE_FRACTION) -> StepSchedule:
    """The three-step optimisation: S (reference boxes, stages separate: F_S off), I (reference boxes, joint through
    F_S), J (predicted boxes, joint), with the given shares of S and I (J takes the rest)."""
    return StepSchedule((STEP_S, STEP_I, STEP_J), (separate_fraction, joint_reference_fraction))


COARSE_TO_FINE_SCHEDULE = coarse_to_fine_schedule()


@dataclass
class CoarseToFineAuxiliary:
    """Recorded by :class:`CoarseToFineNet` per training forward for the loss: the coarse logits (B, 2, *S), the
    crop box of each sample (None: fine stage skipped) and the fine stage's output on that crop."""
    coarse_logits: torch.Tensor
    boxes: List[Optional[Box]]
    fine: List[Optional[MLNOutput]]
    reference_fallbacks: int = 0


class CoarseToFineNet(nn.Module):
    """Coarse stage + saliency transformation + fine stage (module docstring).

    Args:
        coarse: (B, C, *S) -> (B, 2, *S) logits (the plans' U-Net without deep supervision).
        fine: (B, 2C, *s) -> (B, 2, *s) logits or :class:`~nnunetv2_ext.coarse_to_fine.mln.MLNOutput`; ``s`` a multiple
            of ``total_stride``.
        saliency: F_S, a :class:`SalientChangeModule` with ``concat_image=True`` (output 2C channels).
        total_stride: the fine stage's total stride per spatial axis (crop sizes are multiples of it).
        crop_margin: K, voxels per side (int or one per axis); >= 0.
        stopping_rule: tol and T_max of the iterative test.
        random_margin_probability: training only, share of samples whose four margins are drawn from [0, 2K].
        fill_logit: the organ's log-probability outside the box (background 0); moderate, because nnU-Net's
            predictor accumulates logits in float16.
    """

    def __init__(self, coarse: nn.Module, fine: nn.Module, saliency: SalientChangeModule,
                 total_stride: Sequence[int], crop_margin=PAPER_CROP_MARGIN,
                 stopping_rule: StoppingRule = StoppingRule(), random_margin_probability: float = 0.5,
                 fill_logit: float = 20.0):
        super().__init__()
        if not getattr(saliency, "concat_image", False):
            raise ValueError("the saliency transformation of Eq. 9 concatenates the original image: build "
                             "SalientChangeModule(..., concat_image=True)")
        if not 0 <= random_margin_probability <= 1:
            raise ValueError(f"random_margin_probability must lie in [0, 1], got {random_margin_probability}")
        self.coarse, self.fine, self.saliency = coarse, fine, saliency
        self.total_stride = [int(s) for s in total_stride]
        self.crop_margin = normalise_margin(crop_margin, len(self.total_stride))
        self.min_crop_size = [2 * s for s in self.total_stride]
        self.stopping_rule = stopping_rule
        self.random_margin_probability = float(random_margin_probability)
        self.fill_logit = float(fill_logit)
        # saved with the weights, so that inference uses F_S exactly as the last training step did
        self.register_buffer("prior_enabled", torch.tensor(True))
        self.joint = True
        self.reference_boxes = False
        self.iterative_test = True
        self.record_auxiliary = False
        self.auxiliary: Optional[CoarseToFineAuxiliary] = None
        self._reference: Optional[torch.Tensor] = None
        self.iteration_log = IterationLog(stopping_rule)

    # ------------------------------------------------------------------ state set by the trainer
    def set_step(self, step: TrainingStep) -> None:
        self.prior_enabled.fill_(bool(step.prior_enabled))
        self.joint = bool(step.joint)
        self.reference_boxes = bool(step.reference_boxes)

    def set_reference(self, organ_mask: Optional[torch.Tensor]) -> None:
        """Reference organ mask (B, *S) (bool) for the next forward calls (boxes in steps S and I, fallback in J)."""
        self._reference = organ_mask

    # ------------------------------------------------------------------ building blocks
    def crop_box(self, mask: torch.Tensor, randomise: bool = False) -> Optional[Box]:
        """Box of a mask (*S): bounding box + K per side (RSTN's random margins in [0, 2K] when ``randomise`` and a
        draw < random_margin_probability), grown to a multiple of the fine stage's stride; None if empty."""
        box = bounding_box(mask)
        if box is None:
            return None
        if randomise and float(torch.rand(())) < self.random_margin_probability:
            margins = [(int(torch.randint(0, 2 * k + 1, ())), int(torch.randint(0, 2 * k + 1, ())))
                       for k in self.crop_margin]
        else:
            margins = [(k, k) for k in self.crop_margin]
        box = tuple((lo - a, hi + b) for (lo, hi), (a, b) in zip(box, margins))
        return expand_box(box, 0, self.total_stride, self.min_crop_size)

    def fine_input(self, x: torch.Tensor, probability: torch.Tensor, box: Box) -> torch.Tensor:
        """Eq. 9: crop of [X * F_S(P), X] (F_S off: [X, X]); F_S acts on the whole input, then both are cropped."""
        if bool(self.prior_enabled):
            full = self.saliency(x, probability.to(x.dtype))
        else:
            full = torch.cat([x, x], dim=1)
        return crop_with_padding(full, box, 0.0)

    def run_fine(self, fine_input: torch.Tensor) -> MLNOutput:
        out = self.fine(fine_input)
        if isinstance(out, (list, tuple)):  # deep supervision left on by a caller
            out = out[0]
        return out if isinstance(out, MLNOutput) else MLNOutput(out)

    def paste(self, log_probabilities: torch.Tensor, box: Box, spatial: Sequence[int]) -> torch.Tensor:
        """Fine log-probabilities (1, 2, *s) back at full size; outside the box background (0) / organ (-fill)."""
        return torch.cat([paste_crop(log_probabilities[:, :1], box, spatial, 0.0),
                          paste_crop(log_probabilities[:, 1:], box, spatial, -self.fill_logit)], dim=1)

    def background(self, like: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
        out = like.new_zeros((1, 2, *spatial), dtype=torch.float32)
        out[:, 1:] = -self.fill_logit
        return out

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        coarse_logits = self.coarse(x)
        if isinstance(coarse_logits, (list, tuple)):
            coarse_logits = coarse_logits[0]
        if coarse_logits.shape[1] != 2:
            raise ValueError(f"the coarse stage must predict background and organ (2 channels), got "
                             f"{coarse_logits.shape[1]}")
        if not self.training and self.iterative_test:
            return self._iterative(x, coarse_logits)
        return self._single_pass(x, coarse_logits)

    def _single_pass(self, x: torch.Tensor, coarse_logits: torch.Tensor) -> torch.Tensor:
        spatial = x.shape[2:]
        probability = torch.softmax(coarse_logits.float(), 1)[:, 1:]
        predicted = coarse_logits.detach().argmax(1) == 1
        reference = None
        if self._reference is not None:
            reference = self._reference.to(x.device).bool()
            if tuple(reference.shape) != (x.shape[0], *spatial):
                raise ValueError(f"reference organ mask has shape {tuple(reference.shape)}, expected "
                                 f"{(x.shape[0], *spatial)}")
        outputs, boxes, fines, fallbacks = [], [], [], 0
        for b in range(x.shape[0]):
            if self.reference_boxes and reference is not None:
                # an organ-less sample gets the coarse stage's (false positive) box: the fine stage learns to
                # reject boxes without organ, which it meets at test time (nnU-Net samples organ-less slices too)
                mask = reference[b] if bool(reference[b].any()) else predicted[b]
            else:
                mask = predicted[b]
                if reference is not None and not bool(mask.any()) and bool(reference[b].any()):
                    mask, fallbacks = reference[b], fallbacks + 1  # RSTN: empty coarse mask -> reference box
            box = self.crop_box(mask, randomise=self.training)
            boxes.append(box)
            if box is None:
                fines.append(None)
                outputs.append(self.background(x, spatial))
                continue
            p = probability[b:b + 1] if self.joint else probability[b:b + 1].detach()
            fine = self.run_fine(self.fine_input(x[b:b + 1], p, box))
            fines.append(fine)
            outputs.append(self.paste(torch.log_softmax(fine.logits.float(), 1), box, spatial))
        self.auxiliary = CoarseToFineAuxiliary(coarse_logits, boxes, fines, fallbacks) \
            if self.record_auxiliary else None
        output = torch.cat(outputs, dim=0)
        if self.training:
            some_box = any(f is not None for f in fines)
            unused = ([] if bool(self.prior_enabled) and some_box else [self.saliency]) + \
                ([] if some_box else [self.fine])
            output = keep_in_graph(output, unused)
        return output

    def _iterative(self, x: torch.Tensor, coarse_logits: torch.Tensor) -> torch.Tensor:
        spatial = x.shape[2:]
        outputs = []
        for b in range(x.shape[0]):
            xb = x[b:b + 1]
            coarse = torch.log_softmax(coarse_logits[b:b + 1].float(), 1)

            def refine(probability, mask, xb=xb):
                box = self.crop_box(mask[0, 0])
                fine = self.run_fine(self.fine_input(xb, probability, box))
                full = self.paste(torch.log_softmax(fine.logits.float(), 1), box, spatial)
                return full, full[:, 1:].exp(), full.argmax(1, keepdim=True) == 1

            output, record = iterate_fine_stage(coarse[:, 1:].exp(), coarse.argmax(1, keepdim=True) == 1, coarse,
                                                refine, self.stopping_rule)
            self.iteration_log.add(record)
            outputs.append(output)
        return torch.cat(outputs, dim=0)

    # ------------------------------------------------------------------ prediction: the whole case
    def predict_case_logits(self, data: torch.Tensor, context: CaseContext) -> CasePrediction:
        """The whole preprocessed case (C, *S) -> (2, *S): nnU-Net's sliding window (its tiles, steps, Gaussian and
        mirroring) over :meth:`forward`, i.e. the iterative test on every tile (2d configuration: every slice), with
        the records grouped under the case's name; returns one log line and the case's summary as a JSON record."""
        patch = tuple(context.patch_size)
        network = mirrored(self, context.mirror_axes)  # axes of the network's input, as nnU-Net mirrors them
        if len(patch) == data.ndim - 2:  # 2d network on a (C, Z, Y, X) case: tiles are single slices
            def tile_fn(t):
                return network(t[:, :, 0])[:, :, None]
            tile = (1, *patch)
        else:
            tile_fn, tile = network, patch
        cases_before = len(self.iteration_log.cases)
        self.iteration_log.start_case(context.case_name)
        logits = sliding_window(tile_fn, data, tile, 2, context.tile_step_size, context.use_gaussian)
        if len(self.iteration_log.cases) == cases_before:  # iterative test off: nothing recorded
            return CasePrediction(logits)
        summary = self.iteration_log.last_case_summary()
        return CasePrediction(logits, summary, [f"Coarse-to-fine: {format_case(summary)}"], ITERATION_CASE_LOG)

    def report(self, names: Optional[Sequence[str]] = None, json_path: Optional[str] = None) -> str:
        """The per-case lines and the summary of :attr:`iteration_log` (and the JSON file if a path is given)."""
        if json_path:
            self.iteration_log.write_json(json_path, names)
        return self.iteration_log.format(names)


def reference_organ(target: torch.Tensor, organ_label: int = 1) -> torch.Tensor:
    """(B, 1, *S) label map -> (B, *S) organ mask (the ignore label is not organ)."""
    return target[:, 0] == organ_label


def keep_in_graph(output: torch.Tensor, modules: Sequence[nn.Module]) -> torch.Tensor:
    """``output + 0 * (one entry of every parameter of modules)``: parameters a training step did not use (F_S in
    step S, the fine stage when no sample of the batch has a box) still get a (zero) gradient, so DDP's reducer, which
    expects every parameter in every step, does not stall. Numerically a no-op."""
    touched = [p.reshape(-1)[:1] for m in modules for p in m.parameters() if p.requires_grad]
    if not touched:
        return output
    return output + 0.0 * torch.cat(touched).sum().to(output.dtype)
