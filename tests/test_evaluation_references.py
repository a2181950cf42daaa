"""Our metrics against the libraries the challenges and papers use (test-only dependencies, the ``test`` extra):
MONAI (HD95, ASSD, voxel NSD, surfel NSD), DeepMind's ``surface-distance`` (FLARE's surfel NSD and its area table),
MedPy (pooled HD95; its ASSD averages the two directions). Random smooth shapes with random anisotropic spacing, 3D
and 2D; the FLARE22 preset, the penalty convention and missed structures in worst-case lists."""
import math

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from nnunetv2_ext.evaluation.io import LabelSpec
from nnunetv2_ext.evaluation.metrics import mask_metrics
from nnunetv2_ext.evaluation.presets import label_options
from nnunetv2_ext.evaluation.summary import describe


def _shapes(seed, shape):
    rng = np.random.default_rng(seed)
    spacing = tuple(rng.uniform(0.5, 3.0, len(shape)))
    a = gaussian_filter(rng.normal(size=shape), 2) > 0.05
    b = gaussian_filter(rng.normal(size=shape), 2) > 0.05
    return a, b, spacing, float(rng.uniform(0.7, 4.0))


CASES = [(s, (18, 22, 20)) for s in range(4)] + [(10 + s, (40, 36)) for s in range(2)]


@pytest.mark.parametrize("seed, shape", CASES)
def test_surfel_nsd_equals_deepmind_surface_distance(seed, shape):
    sd = pytest.importorskip("surface_distance")
    a, b, spacing, tolerance = _shapes(seed, shape)
    distances = sd.compute_surface_distances(a, b, spacing)
    ours = mask_metrics(a, b, spacing, nsd_tolerance_mm=tolerance, nsd_method="surfel")
    assert ours["NSD"] == pytest.approx(sd.compute_surface_dice_at_tolerance(distances, tolerance), abs=1e-9)


def test_surfel_area_table_equals_deepmind_and_monai():
    sd = pytest.importorskip("surface_distance")
    from nnunetv2_ext.evaluation.surfels import surfel_area_table
    for spacing in ((1.0, 1.0, 1.0), (2.5, 0.7, 0.9), (0.6, 3.1, 1.7)):
        np.testing.assert_allclose(surfel_area_table(spacing),
                                   sd.lookup_tables.create_table_neighbour_code_to_surface_area(spacing))
    np.testing.assert_allclose(surfel_area_table((2.5, 0.7)),
                               sd.lookup_tables.create_table_neighbour_code_to_contour_length((2.5, 0.7)))


@pytest.mark.parametrize("seed, shape", CASES)
def test_hd95_assd_and_nsd_equal_monai(seed, shape):
    pytest.importorskip("monai")
    import torch
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance, compute_surface_dice
    a, b, spacing, tolerance = _shapes(seed, shape)
    onehot = lambda m: torch.from_numpy(np.stack([~m, m])[None].astype(np.float32))
    pred, ref = onehot(b), onehot(a)
    hd95 = float(compute_hausdorff_distance(pred, ref, percentile=95, spacing=spacing)[0, 0])
    assd = float(compute_average_surface_distance(pred, ref, symmetric=True, spacing=spacing)[0, 0])
    nsd_voxel = float(compute_surface_dice(pred, ref, [tolerance], spacing=spacing)[0, 0])
    nsd_surfel = float(compute_surface_dice(pred, ref, [tolerance], spacing=spacing, use_subvoxels=True)[0, 0])
    ours_voxel = mask_metrics(a, b, spacing, nsd_tolerance_mm=tolerance, nsd_method="voxel")
    ours_surfel = mask_metrics(a, b, spacing, nsd_tolerance_mm=tolerance, nsd_method="surfel")
    assert ours_voxel["HD95"] == pytest.approx(hd95, rel=1e-5)  # MONAI: max of the directed 95th percentiles
    assert ours_voxel["ASSD"] == pytest.approx(assd, rel=1e-5)  # MONAI symmetric: both directions pooled
    assert ours_voxel["NSD"] == pytest.approx(nsd_voxel, abs=1e-6)
    assert ours_surfel["NSD"] == pytest.approx(nsd_surfel, abs=1e-5)


@pytest.mark.parametrize("seed, shape", CASES[:3])
def test_hd95_conventions_against_medpy(seed, shape):
    binary = pytest.importorskip("medpy.metric.binary")
    a, b, spacing, _ = _shapes(seed, shape)
    pooled = mask_metrics(a, b, spacing, hd95_method="pooled")
    directed = mask_metrics(a, b, spacing)
    assert pooled["HD95"] == pytest.approx(binary.hd95(b, a, voxelspacing=spacing), rel=1e-6)  # MedPy pools
    assert directed["HD95"] >= pooled["HD95"] - 1e-9  # the max of the directed percentiles is never smaller
    # MedPy 0.5's assd pools both directions as we (and MONAI) do; older MedPy (0.4) averaged the directed means
    assert directed["ASSD"] == pytest.approx(binary.assd(b, a, voxelspacing=spacing), rel=1e-6)


def test_directed_and_pooled_hd95_differ_on_a_known_example():
    """A big reference and a small prediction inside it: the prediction's surface is near the reference's only on one
    side. Pooled (MedPy) and max-directed (MONAI) percentiles then differ, which changes challenge tables."""
    ref = np.zeros((1, 60, 60), bool)
    ref[0, 5:55, 5:55] = True
    pred = np.zeros_like(ref)
    pred[0, 5:15, 5:15] = True
    directed = mask_metrics(ref[0], pred[0], (1.0, 1.0))["HD95"]
    pooled = mask_metrics(ref[0], pred[0], (1.0, 1.0), hd95_method="pooled")["HD95"]
    assert directed > pooled > 0


def test_penalty_convention_and_missed_structures():
    blob = np.zeros((10, 12, 12), bool)
    blob[3:7, 4:8, 4:8] = True
    empty = np.zeros_like(blob)
    spacing = (2.0, 1.0, 1.0)
    assert math.isnan(mask_metrics(blob, empty, spacing)["HD95"])
    assert mask_metrics(blob, empty, spacing, hd_penalty=373.13)["HD95"] == 373.13
    diagonal = math.sqrt(20 ** 2 + 12 ** 2 + 12 ** 2)
    assert mask_metrics(blob, empty, spacing, hd_penalty="diagonal")["ASSD"] == pytest.approx(diagonal)
    assert mask_metrics(empty, empty, spacing, hd_penalty="diagonal")["HD95"] == 0.0
    # a missed case heads the worst-case list although its HD95 is undefined
    stats = describe([1.0, float("nan"), 5.0], ["a", "b", "c"], "HD95", worst_k=2, missed=[False, True, False])
    assert stats["worst_cases"] == [["b", None], ["c", 5.0]] and stats["n_missed"] == 1


def test_flare22_preset_tolerances_and_z_crop():
    specs = [LabelSpec(1, "liver"), LabelSpec(4, "pancreas"), LabelSpec(5, "aorta"), LabelSpec(12, "duodenum")]
    options = label_options(specs, 1.0, None, "flare22")
    assert {k: o["nsd_tolerance_mm"] for k, o in options.items()} == {"1": 5, "4": 5, "5": 2, "12": 7}
    assert [k for k, o in options.items() if o["crop_to_reference_z"]] == ["5"]
    # unnamed labels (no dataset.json) are matched by FLARE22's label values; overrides win
    options = label_options([LabelSpec(10, "10")], 1.0, {"10": 4.0}, "flare22")
    assert options["10"] == {"nsd_tolerance_mm": 4.0, "crop_to_reference_z": True}
    from nnunetv2_ext.evaluation.io import EvaluationInputError
    with pytest.raises(EvaluationInputError, match="no tolerance for labels \\['tumour'\\]"):
        label_options([LabelSpec(2, "tumour")], 1.0, None, "flare22")


def test_z_crop_matches_the_flare22_script():
    """FLARE22 evaluates aorta/IVC/oesophagus on the reference's slices z_lower:z_upper (upper bound exclusive)."""
    sd = pytest.importorskip("surface_distance")
    ref = np.zeros((12, 20, 20), bool)
    ref[3:9, 8:12, 8:12] = True
    pred = np.zeros_like(ref)
    pred[1:11, 8:12, 9:13] = True  # extends beyond the reference in z
    spacing = (2.5, 0.8, 0.8)
    z = slice(3, 8)
    expected = sd.compute_surface_dice_at_tolerance(sd.compute_surface_distances(ref[z], pred[z], spacing), 2.0)
    ours = mask_metrics(ref, pred, spacing, nsd_tolerance_mm=2.0, crop_to_reference_z=True)
    assert ours["NSD"] == pytest.approx(expected)
