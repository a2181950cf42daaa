"""docs/real_data.md, run: every command of its ``bash`` blocks on a synthetic NIH Pancreas-CT download, with the
substitutions documented at the end of that page (tiny trainers, one fold, CPU, the test's dataset id and folders).
If a command, a flag or a trainer name in the recipe breaks, this test fails."""
import json
import os
import re
import time

import pytest

from conftest import REPO_ROOT, TEST_ENV, run_cmd

DOC = REPO_ROOT / "docs" / "real_data.md"
DATASET_ID = 953


def recipe_commands(text: str):
    """The lines of the page's ```bash blocks, in order (a `for` loop line stays one shell line)."""
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def substitute(line: str, folders: dict) -> str:
    """The documented substitutions (docs/real_data.md, "How the test runs this page")."""
    for path, replacement in folders.items():
        line = line.replace(path, str(replacement))
    line = re.sub(r"\b501\b", str(DATASET_ID), line).replace("Dataset501_", f"Dataset{DATASET_ID}_")
    # trainer names, also inside result folder names (nnUNetTrainer__nnUNetPlans__2d)
    line = re.sub(r"\bnnUNetTrainerPNSSHESS(?![A-Za-z0-9])", "nnUNetTrainerPNSSHESSTiny", line)
    line = re.sub(r"\bnnUNetTrainer(?![A-Za-z0-9])", "nnUNetTrainerTiny", line)
    line = line.replace("for FOLD in 0 1 2 3;", "for FOLD in 0;").replace("-f 0 1 2 3", "-f 0")
    line = re.sub(r"(__nnUNetPlans__2d)(?=\s|$)", r"\1/fold_0", line)
    line = line.replace("-num_gpus 1", "-num_gpus 1 -device cpu")
    if line.startswith("nnUNetv2_plan_and_preprocess"):
        line += " -np 1 -npfp 1"
    if line.startswith("nnUNetv2_predict"):
        line += " -npp 1 -nps 1 -device cpu"
    return line


def test_recipe_commands_are_found_and_all_substituted(tmp_path):
    lines = recipe_commands(DOC.read_text(encoding="utf-8"))
    assert [line.split()[0] for line in lines if not line.startswith("export")] == [
        "nnUNetv2_ext_convert_nih", "nnUNetv2_plan_and_preprocess", "for", "for",
        "nnUNetv2_find_best_configuration", "nnUNetv2_predict", "nnUNetv2_predict", "nnUNetv2_ext_compare",
        "nnUNetv2_ext_evaluate"]
    folders = {"/data/nnunet": tmp_path, "/data/Pancreas-CT": tmp_path, "/data/TCIA_pancreas_labels-02-05-2017":
               tmp_path, "/data/predictions": tmp_path, "/data/reports": tmp_path, "/data/new_ct": tmp_path}
    for line in lines:
        out = substitute(line, folders)
        assert "/data/" not in out and " 501" not in out and "0 1 2 3" not in out, out
        assert not re.search(r"-tr nnUNetTrainer(PNSSHESS)?\b(?!Tiny)", out), out
        assert not re.search(r"nnUNetTrainer(PNSSHESS)?__", out), out


@pytest.mark.e2e
def test_real_data_recipe_runs_end_to_end(tmp_path):
    from nnunetv2_ext.dataset_conversion.synthetic import make_nih_pancreas
    dicom_root, labels = make_nih_pancreas(tmp_path / "download", case_numbers=range(1, 9), shape_zyx=(16, 48, 40))
    base = tmp_path / "nnunet"
    folders = {"/data/nnunet": base, "/data/Pancreas-CT": dicom_root,
               "/data/TCIA_pancreas_labels-02-05-2017": labels, "/data/predictions": tmp_path / "predictions",
               "/data/reports": tmp_path / "reports", "/data/new_ct": tmp_path / "new_ct"}
    env = dict(os.environ, **TEST_ENV)
    raw_name = f"Dataset{DATASET_ID:03d}_NIHPancreas"
    for line in recipe_commands(DOC.read_text(encoding="utf-8")):
        line = substitute(line, folders)
        if line.startswith("export "):
            key, value = line[len("export "):].split("=", 1)
            env[key] = value
            os.makedirs(value, exist_ok=True)
            continue
        if line.startswith("nnUNetv2_predict") and not (tmp_path / "new_ct").exists():
            (tmp_path / "new_ct").mkdir()
            for case in ("PANCREAS_0001",):
                os.symlink(base / "nnUNet_raw" / raw_name / "imagesTr" / f"{case}_0000.nii.gz",
                           tmp_path / "new_ct" / f"{case}_0000.nii.gz")
        started = time.time()
        # through bash, as a user types it: $nnUNet_preprocessed etc. expand, `for` loops run
        out = run_cmd(["bash", "-c", line], timeout=600, env={k: v for k, v in env.items() if k.startswith("nnUNet")})
        print(f"{time.time() - started:6.1f} s  {line[:100]}")
        if line.startswith("nnUNetv2_find_best_configuration"):
            assert "nnUNetv2_predict" in out  # it prints the inference commands
    splits = json.loads((base / "nnUNet_preprocessed" / raw_name / "splits_final.json").read_text())
    assert len(splits) == 4 and all(len(s["val"]) == 2 for s in splits)  # the paper's folds reached training
    for name in ("pnsshess", "baseline"):
        assert sorted(p.name for p in (tmp_path / "predictions" / name).glob("*.nii.gz")) == ["PANCREAS_0001.nii.gz"]
    comparison = json.loads((tmp_path / "reports" / "nih_cv" / "comparison.json").read_text())
    # fold_0 stands for each trainer folder (the substitutions): compare names the methods by trainer and fold
    assert list(comparison["methods"]) == ["nnUNetTrainerTiny fold_0", "nnUNetTrainerPNSSHESSTiny fold_0"]
    assert comparison["comparison"]["cases"] == sorted(splits[0]["val"])
    assert (tmp_path / "reports" / "nih_cv" / "comparison.md").is_file()
    evaluation = tmp_path / "reports" / "nih_pnsshess"
    assert (evaluation / "summary.json").is_file() and list(evaluation.glob("per_case_*.png"))
    assert list(evaluation.glob("worst_1_*.png"))  # worst-case overlays
