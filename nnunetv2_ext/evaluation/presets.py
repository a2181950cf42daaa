"""Per-label NSD tolerances and the challenges' presets.

FLARE22 (the official ``FLARE22_DSC_NSD_Eval.py``): NSD tolerance per organ in mm (below), surface elements weighted
by area (DeepMind's ``surface-distance``; ``nsd_method="surfel"``), and for aorta, inferior vena cava and oesophagus
only the axial slices labelled in the reference are evaluated (``crop_to_reference_z``).
"""
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

from nnunetv2_ext.evaluation.io import EvaluationInputError, LabelSpec

#: FLARE22 label value -> (organ name as in the challenge's label list and our FLARE22 converter, tolerance mm)
FLARE22_ORGANS: Dict[int, Tuple[str, float]] = {
    1: ("liver", 5), 2: ("right kidney", 3), 3: ("spleen", 3), 4: ("pancreas", 5), 5: ("aorta", 2),
    6: ("inferior vena cava", 2), 7: ("right adrenal gland", 2), 8: ("left adrenal gland", 2),
    9: ("gallbladder", 2), 10: ("esophagus", 3), 11: ("stomach", 5), 12: ("duodenum", 7), 13: ("left kidney", 3),
}
FLARE22_Z_CROPPED = ("aorta", "inferior vena cava", "esophagus")
_ALIASES = {"ivc": "inferior vena cava", "oesophagus": "esophagus", "rk": "right kidney", "lk": "left kidney",
            "rag": "right adrenal gland", "lag": "left adrenal gland", "gall bladder": "gallbladder"}
PRESETS = ("flare22",)

LabelOptions = Dict[str, Dict[str, Union[float, bool]]]


def _normalise(name: str) -> str:
    name = name.strip().lower().replace("_", " ")
    return _ALIASES.get(name, name)


def parse_tolerances(items: Sequence[str]) -> Dict[str, float]:
    """['pancreas=5', '2=3'] -> {'pancreas': 5.0, '2': 3.0} (label name or value = tolerance in mm)."""
    out = {}
    for item in items:
        name, sep, value = item.rpartition("=")
        try:
            tolerance = float(value)
        except ValueError:
            tolerance = float("nan")
        if not sep or not name.strip() or not tolerance > 0:
            raise EvaluationInputError(f"per-label NSD tolerance {item!r} is not LABEL=MM with MM > 0 (LABEL: a label "
                                       f"name or value of dataset.json)")
        out[name.strip()] = tolerance
    return out


def label_options(labels: Sequence[LabelSpec], default_tolerance_mm: float,
                  per_label: Optional[Mapping[Union[str, int], float]] = None,
                  preset: Optional[str] = None) -> LabelOptions:
    """{label key: {"nsd_tolerance_mm": mm, "crop_to_reference_z": bool}}. Order of precedence: ``per_label``
    (by label name, value or key), then the preset (by organ name, or by FLARE22 label value for unnamed labels),
    then ``default_tolerance_mm``. A preset label that cannot be matched is an error, never a silent default."""
    if preset is not None and preset not in PRESETS:
        raise EvaluationInputError(f"unknown NSD preset {preset!r}; known: {', '.join(PRESETS)}")
    if not default_tolerance_mm > 0:
        raise EvaluationInputError(f"the NSD tolerance must be > 0 mm, got {default_tolerance_mm}")
    per_label = {str(k).strip(): float(v) for k, v in (per_label or {}).items()}
    by_name = {name: tol for name, tol in FLARE22_ORGANS.values()}
    options, unmatched, used = {}, [], set()
    for spec in labels:
        tolerance, crop, preset_missing = default_tolerance_mm, False, False
        if preset == "flare22":
            organ = _normalise(spec.name)
            if organ not in by_name and organ.isdigit() and int(organ) in FLARE22_ORGANS:
                organ = FLARE22_ORGANS[int(organ)][0]
            if organ in by_name:
                tolerance, crop = by_name[organ], organ in FLARE22_Z_CROPPED
            else:
                preset_missing = True
        override = next((k for k in (spec.name, str(spec.value), spec.key) if k in per_label), None)
        if override is not None:
            tolerance = per_label[override]
            used.add(override)
        elif preset_missing:
            unmatched.append(spec.name)
        options[spec.key] = {"nsd_tolerance_mm": tolerance, "crop_to_reference_z": crop}
    unknown = sorted(set(per_label) - used)
    if unknown:
        raise EvaluationInputError(f"NSD tolerances given for labels {unknown} that are not evaluated (labels: "
                                   f"{[s.name for s in labels]})")
    if unmatched:
        raise EvaluationInputError(f"the {preset} preset has no tolerance for labels {unmatched} (its organs: "
                                   f"{', '.join(n for n, _ in FLARE22_ORGANS.values())}); give them with "
                                   f"--nsd-tolerances NAME=MM")
    return options
