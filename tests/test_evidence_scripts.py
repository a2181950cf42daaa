"""Helpers of the evidence scripts in ``scripts/`` (not part of the package), on hand-made inputs."""
import importlib.util
import json
import os


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _log(folder, records):
    os.makedirs(folder)
    with open(os.path.join(folder, "sampling_log.json"), "w") as f:
        json.dump(records, f)


def test_pnss_hess_agreement_reads_every_seed_and_only_rounds_with_agreement(tmp_path, capsys):
    m = _script("pnss_hess_agreement")
    ag = {"spearman": 0.5, "hard_jaccard": 0.25, "coverage": 0.8, "n_hard_forward": 3, "n_hard_exact": 4}
    for seed in (1, 2):
        _log(tmp_path / f"AblForward_BM12x40v4b12w0s{seed}k2__nnUNetPlans__2d" / "fold_0",
             [{"epoch": 0, "agreement": None}, {"epoch": 3, "agreement": dict(ag, spearman=seed / 10)}])
    _log(tmp_path / "AblForwardOther__nnUNetPlans__2d" / "fold_0", [{"epoch": 1, "agreement": ag}])  # another trainer
    rows = m.agreement_rows(str(tmp_path), "AblForward")
    assert [(r[0], r[1], r[2], r[3]["spearman"]) for r in rows] == [
        ("AblForward_BM12x40v4b12w0s1k2", "fold_0", 3, 0.1), ("AblForward_BM12x40v4b12w0s2k2", "fold_0", 3, 0.2)]
    out = tmp_path / "a.md"
    assert m.main([str(tmp_path), "AblForward", str(out)]) == 0
    assert "| AblForward_BM12x40v4b12w0s2k2 | fold_0 | 3 | 0.200 | 0.250 | 80 % | 3 / 4 |" in out.read_text()
    assert m.main([str(tmp_path), "AblSlice", str(tmp_path / "b.md")]) == 1  # nothing logged: an error, no file
    assert not (tmp_path / "b.md").exists() and "AblSlice" in capsys.readouterr().err
