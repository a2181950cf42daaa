"""Three-window CT input (issue 10, part 5): window arithmetic, the FLARE22 converter option, nnU-Net's dataset
check on the result, and the unlabelled cases it writes being usable by the CPS declaration."""
import argparse
import json

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_ext.dataset_conversion import synthetic
from nnunetv2_ext.dataset_conversion.flare22 import main as flare22_main
from nnunetv2_ext.dataset_conversion.windows import (DEFAULT_WINDOWS, Window, parse_window, window_image,
                                                     windows_from_args)


def test_window_maps_hu_to_unit_interval():
    w = Window("abdomen", 40, 400)
    assert (w.lower, w.upper) == (-160, 240)
    np.testing.assert_allclose(w.apply(np.array([-1000, -160, 40, 240, 1000])), [0, 0, 0.5, 1, 1])
    hu = np.linspace(-1200, 1500, 60).reshape(3, 4, 5).astype(np.int16)
    for window in DEFAULT_WINDOWS:  # SimpleITK's IntensityWindowing = the formula
        out = sitk.GetArrayFromImage(window_image(sitk.GetImageFromArray(hu), window))
        np.testing.assert_allclose(out, window.apply(hu), atol=1e-6)
    assert [(w.name, w.level, w.width) for w in DEFAULT_WINDOWS] == [("abdomen", 40, 400), ("chest", -600, 1500),
                                                                     ("spine", 400, 1800)]


def test_window_arguments():
    assert parse_window("liver:60:160") == Window("liver", 60.0, 160.0)
    for bad in ("liver:60", "liver:x:160", "liver:60:0", ":1:2"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_window(bad)
    args = argparse.Namespace(three_windows=True, window=None)
    assert windows_from_args(args) == DEFAULT_WINDOWS
    assert windows_from_args(argparse.Namespace(three_windows=False, window=None)) is None
    with pytest.raises(ValueError, match="differ"):
        windows_from_args(argparse.Namespace(three_windows=False, window=[Window("a", 0, 1), Window("a", 1, 1)]))


def test_flare22_three_windows(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    monkeypatch.setenv("nnUNet_raw", str(raw))
    src = synthetic.make_flare22(tmp_path / "src", labeled=(1, 2), unlabeled=(1,), validation=(1,))
    assert flare22_main(["-i", str(src), "-d", "947", "-np", "1", "--write-unlabeled", "--three-windows"]) == 0
    target = raw / "Dataset947_FLARE22"
    dataset_json = json.loads((target / "dataset.json").read_text())
    assert dataset_json["channel_names"] == {"0": "noNorm", "1": "noNorm", "2": "noNorm"}
    assert dataset_json["channel_windows"]["1"] == {"name": "chest", "level": -600, "width": 1500,
                                                    "hu_range": [-1350.0, 150.0]}
    for sub, case in (("imagesTr", "FLARE22_Tr_0001"), ("imagesTs", "FLARE22_Ts_0001"),
                      ("imagesUnlabeled", "FLARE22_Un_00001")):
        names = sorted(p.name for p in (target / sub).glob(f"{case}_*.nii.gz"))
        assert names == [f"{case}_{i:04d}.nii.gz" for i in range(3)]
    source = sitk.ReadImage(str(src / "Training" / "FLARE22_LabeledCase50" / "images" / "FLARE22_Tr_0001_0000.nii.gz"))
    for i, window in enumerate(DEFAULT_WINDOWS):
        channel = sitk.ReadImage(str(target / "imagesTr" / f"FLARE22_Tr_0001_{i:04d}.nii.gz"))
        assert channel.GetSpacing() == source.GetSpacing() and channel.GetOrigin() == source.GetOrigin()
        np.testing.assert_allclose(sitk.GetArrayFromImage(channel), window.apply(sitk.GetArrayFromImage(source)),
                                   atol=1e-6)
    manifest = json.loads((target / "nnunetv2_ext_conversion.json").read_text())
    assert manifest["options"]["windows"] == [["abdomen", 40, 400], ["chest", -600, 1500], ["spine", 400, 1800]]
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    verify_dataset_integrity(str(target), num_processes=1)  # nnU-Net's own check of the 3-channel dataset
    # the unlabelled cases are found with all three channels (CPS / self-training declaration)
    from nnunetv2_ext.semisupervised.unlabelled import find_unlabelled_cases
    assert len(find_unlabelled_cases(str(target), dataset_json)["FLARE22_Un_00001"]) == 3
    # custom windows; duplicate names are a command-line error (exit 2), nothing written
    with pytest.raises(SystemExit) as e:
        flare22_main(["-i", str(src), "-d", "946", "-np", "1", "--window", "a:0:100", "--window", "a:50:100"])
    assert e.value.code == 2 and not list(raw.glob("*946*"))
    assert flare22_main(["-i", str(src), "-d", "946", "-np", "1", "--window", "liver:60:160"]) == 0
    assert json.loads((raw / "Dataset946_FLARE22" / "dataset.json").read_text())["channel_names"] == {"0": "noNorm"}
