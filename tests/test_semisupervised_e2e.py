"""Semi-supervised learning end to end through nnU-Net's own commands (issue 10, parts 3, 4 and 6).

One module-scoped phantom (6 labelled, 6 unlabelled in imagesUnlabeled/, 2 test cases; 24 x 48 x 48; 2d), planned
and preprocessed once, then:

- self-training with ``nnUNetv2_ext_self_train`` and the CPS trainer (the pseudo-label -> CPS loop, issue 19 item 1),
  two rounds of CPS training: round 0 trains 2 CPS models (folds 0 and 1) on D_0, predicts the unlabelled images,
  scores, selects (top half) and writes D_1 (the cases not selected stay unlabelled); the command is then killed
  (SIGKILL, its whole process group) between the rounds; the same command resumes with the second round, the final
  CPS model on D_1 (fold 0: preprocess D_1, train with D_1's pseudo-labelled cases as labelled and its remaining
  unlabelled cases as CPS input), without redoing round 0; a third call runs nothing. (More rounds run the same
  code on D_r: left out for the suite's time);
- the CPS trainer alone (crash, ``--c``, prediction): ``test_cps_e2e.py``.
"""
import json
import signal

import pytest

from conftest import run_cmd, run_until_then_kill, semisupervised_phantom

pytestmark = pytest.mark.e2e

LABELLED_ID, ROUND1_ID = 948, 949
#: seeded and long enough that both CPS networks find the organ (its docstring): the round needs scores
SELF_TRAIN_TRAINER = "nnUNetTrainerCPSTinySeeded"


@pytest.fixture(scope="module")
def semi_phantom(nnunet_dirs):
    return semisupervised_phantom(LABELLED_ID, nnunet_dirs["nnUNet_raw"])


# ------------------------------------------------------------------------------------------------ self-training
@pytest.fixture(scope="module")
def self_train_run(semi_phantom, nnunet_dirs, tmp_path_factory):
    work = tmp_path_factory.mktemp("self_train")
    # the CPS trainer, so that the same run also tests the pseudo-label -> CPS loop (Pham et al., Table 5 rows 3-4;
    # issue 19, item 1): D_1 keeps the cases not accepted as unlabelled input of the final CPS model
    args = ["nnUNetv2_ext_self_train", "-d", LABELLED_ID, "-c", "2d", "-o", ROUND1_ID, "-f", "0", "1",
            "--final-folds", "0", "-tr", SELF_TRAIN_TRAINER, "--top-fraction", "0.5", "--work-dir", work,
            "--no-stop-when-no-new", "-device", "cpu", "-np", "1", "-npp", "1", "-nps", "1"]
    state = work / "self_train_state.json"

    def round_0_selected():
        try:
            return "selected" in json.loads(state.read_text())["rounds"].get("0", {})
        except (OSError, ValueError):
            return False
    killed = run_until_then_kill(args, round_0_selected, timeout=1800)
    resumed = run_cmd(args, timeout=1800)
    third = run_cmd(args, timeout=600)
    return {"work": work, "killed": killed, "first": killed.stdout, "resumed": resumed, "second": third,
            "args": args}


def test_round_trains_predicts_selects_and_retrains(self_train_run, nnunet_dirs, semi_phantom):
    out = self_train_run["first"]
    assert self_train_run["killed"].returncode == -signal.SIGKILL, out[-3000:]
    assert out.count("$ nnUNetv2_train") == 2 and out.count("$ nnUNetv2_predict") == 2  # round 0, then killed
    assert f"$ nnUNetv2_train {ROUND1_ID}" not in out  # killed before round 1 (right after round 0's selection was saved)
    work = self_train_run["work"]
    unlabelled = sorted(p.name[:-12] for p in (semi_phantom / "imagesUnlabeled").iterdir())
    for fold in (0, 1):
        pred = work / "round_0" / "predictions" / f"{SELF_TRAIN_TRAINER}__fold_{fold}"
        assert sorted(p.name[:-7] for p in pred.glob("*.nii.gz")) == unlabelled
    scores = (work / "round_0" / "pseudolabels" / "scores.csv").read_text().splitlines()
    assert len(scores) == 1 + len(unlabelled) and scores[0].startswith("case,score,score_organ")
    raw1 = next(nnunet_dirs["nnUNet_raw"].glob(f"Dataset{ROUND1_ID}_*"))
    manifest = json.loads((raw1 / "pseudo_labels.json").read_text())
    selected = [s["case"] for s in manifest["selected"]]
    assert len(selected) == 3  # top half of 6
    assert sorted(p.name for p in (raw1 / "labelsTr").iterdir()) == sorted(
        [p.name for p in (semi_phantom / "labelsTr").iterdir()] + [c + ".nii.gz" for c in selected])
    # validation stays on the labelled cases; the pseudo-labelled ones are training cases of every fold
    splits = json.loads((nnunet_dirs["nnUNet_preprocessed"] / raw1.name / "splits_final.json").read_text())
    assert all(set(selected) <= set(f["train"]) and not set(selected) & set(f["val"]) for f in splits)
    # D_1 reuses D_0's plans (same network and normalisation)
    plans0 = json.loads((nnunet_dirs["nnUNet_preprocessed"] / semi_phantom.name / "nnUNetPlans.json").read_text())
    plans1 = json.loads((nnunet_dirs["nnUNet_preprocessed"] / raw1.name / "nnUNetPlans.json").read_text())
    assert plans1["configurations"]["2d"] == plans0["configurations"]["2d"]
    state = json.loads((work / "self_train_state.json").read_text())
    assert state["rounds"]["0"]["selected"] == selected


def test_killed_between_rounds_resumes_with_the_final_cps_model(self_train_run, nnunet_dirs, semi_phantom):
    """The resumed call redoes nothing of round 0: it preprocesses D_1 and trains the final CPS model on it, whose
    labelled cases include the accepted pseudo-labels and whose unlabelled input is the rest (Pham et al., Table 5
    rows 3-4)."""
    out = self_train_run["resumed"]
    assert "round 0: selection done before (3 cases)" in out
    assert out.count("$ nnUNetv2_train") == 1 and out.count("$ nnUNetv2_predict") == 0, out[-3000:]
    trains = [line for line in out.splitlines() if line.startswith("$ nnUNetv2_train")]
    assert [line.split()[2] for line in trains] == [str(ROUND1_ID)], trains
    work = self_train_run["work"]
    state = json.loads((work / "self_train_state.json").read_text())
    raw1 = next(nnunet_dirs["nnUNet_raw"].glob(f"Dataset{ROUND1_ID}_*"))
    assert state["final"]["dataset"] == raw1.name and state["final"]["round"] == 1
    unlabelled = sorted(p.name[:-12] for p in (semi_phantom / "imagesUnlabeled").iterdir())
    selected = sorted(s["case"] for s in json.loads((raw1 / "pseudo_labels.json").read_text())["selected"])
    rest = sorted(set(unlabelled) - set(selected))
    assert len(selected) == 3 and sorted(p.name[:-12] for p in (raw1 / "imagesUnlabeled").iterdir()) == rest
    final = nnunet_dirs["nnUNet_results"] / raw1.name / f"{SELF_TRAIN_TRAINER}__nnUNetPlans__2d" / "fold_0"
    assert (final / "checkpoint_final.pth").exists()
    assert f"CPS: {len(rest)} unlabelled cases" in _log(final)  # trained with its remaining unlabelled cases
    round0 = nnunet_dirs["nnUNet_results"] / semi_phantom.name / f"{SELF_TRAIN_TRAINER}__nnUNetPlans__2d" / "fold_0"
    assert f"CPS: {len(unlabelled)} unlabelled cases" in _log(round0)  # round 0: every unlabelled case


def test_second_call_resumes_without_redoing_anything(self_train_run):
    out = self_train_run["second"]
    assert "$ nnUNetv2_" not in out, out[-2000:]
    assert "selection done before" in out


def test_self_train_bad_input_exit_2(semi_phantom, nnunet_dirs, tmp_path):
    from nnunetv2_ext.semisupervised.self_train import main
    base = ["-d", str(LABELLED_ID), "-c", "2d", "-o", "947", "--work-dir", str(tmp_path), "--threshold", "0.5"]
    assert main(base + ["-f", "0"]) == 2  # one model: no consensus
    assert main(["-d", "939", "-c", "2d", "-o", "947", "-f", "0", "1", "--threshold", "0.5"]) == 2
    assert main(base[:-2] + ["--threshold", "1.5", "-f", "0", "1"]) == 2
    assert main(base + ["-f", "0", "1", "--images", str(tmp_path / "none")]) == 2
    assert not list(tmp_path.iterdir())  # nothing written


def _log(fold):
    return "\n".join(p.read_text() for p in sorted(fold.glob("training_log_*.txt")))
