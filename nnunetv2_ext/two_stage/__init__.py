"""Parts shared by two-stage (organ -> target) methods: the cascade tumour variant (Qiu et al. 2024,
:mod:`nnunetv2_ext.cascade`) and the coarse-to-fine scheme (Liu et al.). Trainer-free; unit-tested
without nnU-Net.

Shared API (keep it stable; additive changes only, announced in commit messages starting "two_stage:"):

``boxes`` (geometry, no tensors needed)
    ``Box = ((start, stop), ...)`` per spatial axis, stop exclusive, voxels of the array it was computed on; boxes may
    reach outside the array (crops pad that part). ``crop_ndim``: 2 = one box per slice (axes Y, X of a (Z, Y, X)
    case, nnU-Net 2d), 3 = one box per case.
    ``bounding_box(mask) -> Box | None``; ``largest_component(mask)`` (drops stage-1 false positives);
    ``grow_box(box, K)`` (K per axis, or (before, after) per axis); ``jitter_margin(K, ndim, jitter)`` (training
    augmentation of the box); ``normalise_margin(K, ndim)`` (K voxels, int or one per axis, >= 0, else ValueError);
    ``fit_box_to_patch(box, patch_size, max_zoom, min_zoom=1) -> (box, out_size, zoom)`` (box grown to the patch's
    aspect and the zoom that maps it onto the patch: small organs are magnified; min_zoom < 1 also shrinks);
    ``case_boxes(mask, crop_ndim, spacing) -> CaseBoxes`` (the boxes of a WHOLE case's mask, per slice or per
    volume, with the union box and its extent in mm); ``box_in_mm``, ``margin_in_mm``, ``format_box`` (logs);
    ``check_margin_leaves_room(K, patch_size, min_room)`` (bad-input check).

``crop`` (torch, differentiable, tensors ``(*leading, *spatial)``)
    ``crop_with_padding(x, box, pad_value)``; ``paste_crop(crop, box, spatial_shape, fill)``;
    ``resize_to(x (B, C, *S), size)`` (linear); ``crop_and_resize(x, box, out_size)`` and its inverse
    ``resize_and_paste(crop, box, spatial_shape, fill)``.

``prior``
    ``saliency_weighted(image, weight, concat_image=False)`` (multiply, optionally append the original image: the
    coarse-to-fine Eq. 9 form); ``SalientChangeModule(conv_op, image_channels, concat_image=False)``: learned weight
    ``1 + tanh(h(p))`` from a stage-1 probability map ``p`` (B, 1, *S), identity at initialisation, ``out_channels``.

``steps``
    ``TrainingStep(name, prior_enabled, joint, reference_boxes)`` (frozen); ``StepSchedule(steps, fractions)``
    (frozen, validated; the last step takes the rest of ``num_epochs``): ``starts(num_epochs)``,
    ``step_for_epoch(epoch, num_epochs)``, ``describe(num_epochs)``. The cascade's S / I / J:
    ``CASCADE_SCHEDULE`` / ``cascade_schedule(separate_fraction, joint_reference_fraction)``.

Whole-case prediction (both methods' networks are case-level networks) is nnU-Net glue and lives in
:mod:`nnunetv2_ext.nnunet_adapters.predictor` (``CaseContext``, ``CasePrediction``, ``sliding_window``, ``mirrored``,
``install_case_level_prediction``, ``validation_dataset_declaring_cases``).

``ops``
    ``ConvNormAct`` and ``PlansOps`` (the plans' conv / norm / non-linearity, dilated convolutions included).

``data_loader``
    ``OrganCentredDataLoader(..., organ_labels, margin)``: nnU-Net's loader whose forced-foreground patches hold the
    whole organ box (+ K) of the case (2d: of the slice) wherever it fits; state-free (worker-safe).

``checks``
    ``check_cascade_labels(label_manager, dataset_name)`` (labels exactly 0 / 1 organ / 2 tumour),
    ``check_tumour_inside_organ(dataset, identifiers, dataset_name)`` (reads nnU-Net's stored class locations).
"""
from nnunetv2_ext.two_stage.boxes import (Box, CaseBoxes, bounding_box, box_in_mm, case_boxes,  # noqa: F401
                                          check_margin_leaves_room, fit_box_to_patch, format_box, grow_box,
                                          margin_in_mm, normalise_margin, whole_box)
from nnunetv2_ext.two_stage.crop import (crop_and_resize, crop_with_padding, paste_crop, resize_and_paste,  # noqa
                                         resize_to)
from nnunetv2_ext.two_stage.prior import SalientChangeModule, saliency_weighted  # noqa: F401
from nnunetv2_ext.two_stage.steps import (CASCADE_SCHEDULE, STEP_I, STEP_J, STEP_S, StepSchedule,  # noqa: F401
                                          TrainingStep, cascade_schedule)
