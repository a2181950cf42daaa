"""Every console script: help text for every flag, no literal '%%' in help, nnU-Net's flag names where they mean the
same, one spelling per concept (old spellings only as hidden aliases), and bad input -> a clear message, exit code 2,
nothing written."""
import argparse
import json
import os
from importlib import metadata

import numpy as np
import pytest
import SimpleITK as sitk

#: concept -> the one visible spelling; the others may exist only as hidden (help=SUPPRESS) aliases
DEPRECATED_VISIBLE = {"--skip-bad": "--skip-bad-cases", "--paper-splits": "--paper-split"}
#: dest -> nnU-Net's short flag for the same meaning
NNUNET_SHORT_FLAGS = {"dataset_id": "-d", "num_processes": "-np", "input": "-i", "output": "-o"}


def _scripts():
    eps = [ep for ep in metadata.entry_points(group="console_scripts") if ep.value.startswith("nnunetv2_ext.")]
    assert eps, "nnunetv2_ext is not installed (pip install -e .)"
    return eps


class _Captured(Exception):
    def __init__(self, parser):
        self.parser = parser


def _parser_of(entry_point, monkeypatch) -> argparse.ArgumentParser:
    def capture(parser, *args, **kwargs):
        raise _Captured(parser)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(_Captured) as info:
        entry_point.load()(["--help"])
    return info.value.parser


def test_every_command_has_both_spellings():
    names = {ep.name: ep.value for ep in _scripts()}
    for name, target in names.items():
        other = name.replace("nnunetv2_ext_", "nnUNetv2_ext_") if name.startswith("nnunetv2_ext_") \
            else name.replace("nnUNetv2_ext_", "nnunetv2_ext_")
        assert names.get(other) == target, f"{name} has no {other} alias"
    assert "nnUNetv2_ext_demo" in names


@pytest.mark.parametrize("name", sorted({ep.name for ep in _scripts() if ep.name.startswith("nnUNetv2_ext_")}))
def test_help_text_and_flag_names(name, monkeypatch):
    entry_point = next(ep for ep in _scripts() if ep.name == name)
    parser = _parser_of(entry_point, monkeypatch)
    visible_dests = set()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if action.help == argparse.SUPPRESS:
            continue
        visible_dests.add(action.dest)
        assert action.help and action.help.strip(), f"{name}: {action.option_strings or action.dest} has no help"
        for option in action.option_strings:
            assert option not in DEPRECATED_VISIBLE, f"{name}: {option} should be {DEPRECATED_VISIBLE[option]}"
        if action.dest in NNUNET_SHORT_FLAGS and action.option_strings:
            assert NNUNET_SHORT_FLAGS[action.dest] in action.option_strings, \
                f"{name}: {action.option_strings} lacks nnU-Net's {NNUNET_SHORT_FLAGS[action.dest]}"
    for action in parser._actions:  # a hidden option is an alias of a visible one
        if action.help == argparse.SUPPRESS and not isinstance(action, argparse._HelpAction):
            assert action.dest in visible_dests, f"{name}: hidden {action.option_strings} aliases nothing"
    text = parser.format_help()  # raises on a broken %-format in a help string
    assert "%%" not in text and "%(" not in text, f"{name}: literal % formatting in the help output"


# ------------------------------------------------------------------------------------------------- bad input
def _write(path, array, spacing=(2.0, 1.0, 1.0)):
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(spacing[::-1])
    sitk.WriteImage(image, str(path))


@pytest.fixture
def seg_folders(tmp_path):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    ref.mkdir()
    pred.mkdir()
    for i in range(2):
        a = np.zeros((8, 16, 16), np.uint8)
        a[2:6, 4:10, 4:10] = 1
        _write(ref / f"c{i}.nii.gz", a)
        _write(pred / f"c{i}.nii.gz", np.roll(a, i, axis=1))
    return ref, pred


def _listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_evaluate_and_compare_bad_input(seg_folders, tmp_path, capsys):
    from nnunetv2_ext.evaluation.cli import compare_main, evaluate_main
    ref, pred = seg_folders
    before = _listing(tmp_path)
    base = ["-np", "1", "--no-progress"]
    cases = [
        (evaluate_main, [str(tmp_path / "missing"), str(pred), "-o", str(tmp_path / "r")], "does not exist"),
        (evaluate_main, [str(ref), str(tmp_path / "missing"), "-o", str(tmp_path / "r")], "does not exist"),
        (evaluate_main, [str(ref), str(pred), "-o", str(tmp_path / "r"), "--nsd-tolerances", "1=abc"], "LABEL=MM"),
        (evaluate_main, [str(ref), str(pred), "-o", str(tmp_path / "r"), "--nsd-tolerances", "7=2"], "not evaluated"),
        (evaluate_main, [str(ref), str(pred), "-o", str(tmp_path / "r"), "--nsd-preset", "flare22",
                         "-l", "1"], None),  # label "1" is FLARE22's liver: accepted
        (compare_main, [str(ref), str(pred), str(tmp_path / "missing"), "-o", str(tmp_path / "c")], "does not exist"),
        (compare_main, [str(ref), str(pred), "-o", str(tmp_path / "c")], "at least two"),
        (evaluate_main, [str(ref), str(pred), "-o", str(tmp_path / "r"), "--overlays", "-1"], "--overlays"),
        (evaluate_main, [str(ref), str(pred), "-o", str(tmp_path / "r"), "--images", str(tmp_path / "no")],
         "image folder"),
    ]
    for main, args, message in cases:
        code = main(args + base)
        err = capsys.readouterr().err
        if message is None:
            assert code == 0, err
            before = _listing(tmp_path)
            continue
        assert code == 2 and message in err, (args, err)
        assert _listing(tmp_path) == before, f"{args} wrote something"
    # an existing report folder is kept without --overwrite, replaced with it
    report = tmp_path / "r"
    files = _listing(report)
    assert "per_case_1.png" in files and any(f.startswith("worst_1_") for f in files)
    stamp = (report / "summary.json").stat().st_mtime_ns
    assert evaluate_main([str(ref), str(pred), "-o", str(report)] + base) == 2
    assert "--overwrite" in capsys.readouterr().err and (report / "summary.json").stat().st_mtime_ns == stamp
    assert evaluate_main([str(ref), str(pred), "-o", str(report), "--overwrite"] + base) == 0
    summary = json.loads((report / "summary.json").read_text())
    assert set(summary["settings"]["versions"]) >= {"nnunetv2_ext", "nnunetv2", "torch"}
    for flag, value in (("--nsd-method", "bogus"), ("--hd95-method", "median"), ("--hd-penalty", "-3"),
                        ("--hd-penalty", "0"),
                        ("--nsd-preset", "flare99"), ("--nsd-tolerance", "0")):
        with pytest.raises(SystemExit) as exit_info:
            evaluate_main([str(ref), str(pred), "-o", str(tmp_path / "x"), flag, value] + base)
        assert exit_info.value.code == 2 and flag in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_phantom_and_trainer_path_bad_input(tmp_path, monkeypatch, capsys):
    from nnunetv2_ext._register_trainers import main as trainer_path_main
    from nnunetv2_ext.phantom import main as phantom_main
    raw = tmp_path / "raw"
    raw.mkdir()
    monkeypatch.delenv("nnUNet_raw", raising=False)
    small = ["--num-cases", "1", "--shape", "16", "16", "16"]
    assert phantom_main(["-d", "950"] + small) == 2 and "nnUNet_raw" in capsys.readouterr().err
    assert phantom_main(["-d", "1000", "--raw-folder", str(raw)] + small) == 2
    assert phantom_main(["-d", "950", "--raw-folder", str(raw), "--shape", "4", "4", "4"]) == 2
    assert phantom_main(["-d", "950", "--raw-folder", str(tmp_path / "nope")] + small) == 2
    assert _listing(raw) == []
    assert phantom_main(["-d", "950", "--raw-folder", str(raw)] + small) == 0
    before = _listing(raw)
    assert phantom_main(["-d", "950", "--raw-folder", str(raw)] + small) == 2
    assert "--overwrite" in capsys.readouterr().err
    for name in ("bad/name", "../../escape", ".."):  # would write into a subfolder or outside nnUNet_raw
        assert phantom_main(["-d", "951", "--name", name, "--raw-folder", str(raw)] + small) == 2
        assert "dataset name" in capsys.readouterr().err and _listing(raw) == before
    assert phantom_main(["-d", "950", "--name", "Other", "--raw-folder", str(raw)] + small) == 2
    assert "already used" in capsys.readouterr().err and _listing(raw) == before
    assert phantom_main(["-d", "950", "--raw-folder", str(raw), "--overwrite"] + small) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        trainer_path_main(["--bogus"])
    assert exit_info.value.code == 2
    capsys.readouterr()
    assert trainer_path_main([]) == 0 and os.path.isdir(capsys.readouterr().out.strip())


@pytest.mark.parametrize("module, extra", [("nih_pancreas", ["--labels", "LABELS"]), ("lits", []), ("msd", []),
                                           ("flare22", [])])
def test_converters_bad_input(module, extra, tmp_path, monkeypatch, capsys):
    import importlib
    main = importlib.import_module(f"nnunetv2_ext.dataset_conversion.{module}").main
    raw = tmp_path / "raw"
    raw.mkdir()
    monkeypatch.setenv("nnUNet_raw", str(raw))
    extra = [str(tmp_path) if a == "LABELS" else a for a in extra]
    assert main(["-i", str(tmp_path / "missing"), "-d", "952", "-np", "1"] + extra) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["-i", str(tmp_path), "-d", "0", "-np", "1"] + extra) == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["-i", str(tmp_path), "-d", "952", "--bogus-flag"] + extra)
    assert exit_info.value.code == 2
    assert _listing(raw) == []


@pytest.mark.e2e
def test_pnss_schedule_bad_input_is_a_message_not_a_traceback(phantom_2d, capsys):
    """The reliability issue's item 9: a bad fold, a misspelled trainer and a planned but unpreprocessed
    configuration end with exit 2 and a message; the good call prints the plan."""
    from conftest import PHANTOM_ID
    from nnunetv2_ext.sampling.schedule_cli import main
    for args, message in ((["-f", "abc"], "-f abc"), (["-tr", "nnUNetTrainerPNSHESS"], "not found"),
                          (["-c", "3d_fullres"], "not preprocessed"), (["-tr", "nnUNetTrainer"], "no PNSS/HESS")):
        with pytest.raises(SystemExit) as info:
            main(["-d", str(PHANTOM_ID), "-c", "2d"] + args)
        err = capsys.readouterr().err
        assert info.value.code == 2 and message in err and "Traceback" not in err, (args, err)
    main(["-d", str(PHANTOM_ID), "-c", "2d"])
    assert "r reaches 0 at nnU-Net epoch" in capsys.readouterr().out
