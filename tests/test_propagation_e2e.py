"""Reference slices + mask propagation end to end through the commands (issue 19, item 3).

The session's organ phantom (conftest ``phantom_2d``: 10 training + 2 held-out volumes, 24x48x48): a seeded plain
2D nnU-Net (``nnUNetTrainerTinySeeded``, 6 x 25 iterations, fold ``all``) as the reference model; ``nnUNetv2_ext_train_propagation`` (a small
network, 40 iterations: this checks the plumbing, not the quality); ``nnUNetv2_ext_propagate`` with k = 5 on the
held-out volumes plus a volume without any organ. Checked: ordinary nnU-Net prediction files with the input's
geometry; on its kept reference slices a case carries exactly the reference model's masks; the log names the
reference slices and kept masks; the organ-free volume falls back to the reference model's full prediction, said in
the output and the log; bad input (k too large for a case, a model of another label) refused before anything is
written.
"""
import json

import pytest
import SimpleITK as sitk

from conftest import PHANTOM_ID, run_cmd, run_process, write_organ_free_image

pytestmark = pytest.mark.e2e

TRAINER = "nnUNetTrainerTinySeeded"


@pytest.fixture(scope="module")
def propagation_run(phantom_2d, nnunet_dirs, tmp_path_factory):
    work = tmp_path_factory.mktemp("propagation")
    run_cmd(["nnUNetv2_train", PHANTOM_ID, "2d", "all", "-tr", TRAINER, "-device", "cpu"], timeout=900)
    model = work / "organ.pth"
    train_out = run_cmd(["nnUNetv2_ext_train_propagation", "-d", PHANTOM_ID, "-l", "organ", "-o", model,
                         "--iterations", "40", "--batch", "2", "--width", "4", "-device", "cpu"])
    inputs = work / "in"
    inputs.mkdir()
    for f in (phantom_2d / "imagesTs").glob("*.nii.gz"):
        (inputs / f.name).symlink_to(f)
    write_organ_free_image(next((phantom_2d / "imagesTs").glob("*.nii.gz")), inputs / "noorgan_000_0000.nii.gz")
    out = work / "out"
    cmd = ["nnUNetv2_ext_propagate", "-i", inputs, "-o", out, "-d", PHANTOM_ID, "-c", "2d", "-tr", TRAINER, "-f",
           "all", "-pm", model, "-k", "5", "--keep", "2", "--disable_tta", "-device", "cpu"]
    predict_out = run_cmd(cmd)
    return {"work": work, "inputs": inputs, "out": out, "model": model, "cmd": cmd,
            "train_output": train_out, "predict_output": predict_out, "raw": phantom_2d}


def test_propagation_writes_nnunet_predictions_that_keep_the_references(propagation_run):
    out, inputs = propagation_run["out"], propagation_run["inputs"]
    cases = sorted(p.name[:-12] for p in inputs.glob("*_0000.nii.gz"))
    assert sorted(p.name for p in out.glob("*.nii.gz")) == [c + ".nii.gz" for c in cases]
    assert (out / "dataset.json").is_file() and (out / "plans.json").is_file()
    assert "propagation training: iteration 40/40" in propagation_run["train_output"]
    records = {r["case"]: r for r in map(json.loads, (out / "propagation_log.jsonl").open())}
    assert set(records) == set(cases)
    propagated = [c for c in cases if not records[c]["labels"]["organ"]["fallback"]]
    assert propagated, records  # the reference model found the organ on some held-out reference slice
    for case in cases:
        image = sitk.ReadImage(str(inputs / f"{case}_0000.nii.gz"))
        seg_image = sitk.ReadImage(str(out / f"{case}.nii.gz"))
        assert seg_image.GetSize() == image.GetSize() and seg_image.GetSpacing() == image.GetSpacing()
        assert seg_image.GetOrigin() == image.GetOrigin()
        record = records[case]
        assert record["reference_slices"] == [2, 7, 12, 16, 21] and record["slices"] == 24
    for case in propagated:
        organ = records[case]["labels"]["organ"]
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{case}.nii.gz")))
        kept = organ["kept"]
        assert 1 <= len(kept) <= 2
        areas = {int(z): a for z, a in organ["areas"].items()}
        assert sorted(areas[z] for z in kept) == sorted(sorted(areas.values())[-len(kept):])  # the largest ones
        for z in kept:  # a reference slice keeps the reference model's mask
            assert int((seg[z] == 1).sum()) == areas[z], (case, z)
        assert f"propagation: {case}: label 'organ' propagated from slices {kept}" in \
            propagation_run["predict_output"]


def test_organ_free_volume_falls_back_to_the_full_prediction_and_says_so(propagation_run):
    records = {r["case"]: r for r in map(json.loads, (propagation_run["out"] / "propagation_log.jsonl").open())}
    record = records["noorgan_000"]
    assert record["labels"]["organ"]["fallback"] is True and record["full_prediction_run"] is True
    assert "WARNING: propagation: noorgan_000: no reference slice (k = 5: [2, 7, 12, 16, 21]) shows label 'organ'; " \
           "the reference model's full prediction of that label is used" in propagation_run["predict_output"]


def test_bad_input_is_refused_before_anything_is_written(propagation_run, tmp_path):
    cmd = list(propagation_run["cmd"])
    target = tmp_path / "never"
    cmd[cmd.index("-o") + 1] = target
    too_many = list(cmd)
    too_many[too_many.index("-k") + 1] = "25"
    p = run_process(too_many)
    assert p.returncode == 2 and "k = 25 reference slices but the volume has only 24 slices" in p.stdout
    assert "case " in p.stdout and not target.exists()
    # a propagation model of a label the dataset does not have
    import torch
    saved = torch.load(propagation_run["model"], weights_only=False)
    saved["meta"]["label"] = "liver"
    other = tmp_path / "liver.pth"
    torch.save(saved, other)
    wrong = list(cmd)
    wrong[wrong.index("-pm") + 1] = other
    p = run_process(wrong)
    assert p.returncode == 2 and "trained for label 'liver'" in p.stdout and not target.exists()
    p = run_process(["nnUNetv2_ext_train_propagation", "-d", PHANTOM_ID, "-l", "tumour", "-o", tmp_path / "t.pth",
                     "--iterations", "1", "-device", "cpu"])
    assert p.returncode == 2 and "label 'tumour' is not a foreground label" in p.stdout
    assert not (tmp_path / "t.pth").exists()
