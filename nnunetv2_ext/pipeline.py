"""nnU-Net's full pipeline on one dataset, driven through its own commands, for the demo and the evidence scripts.

train (``nnUNetv2_train``) -> postprocessing chosen on the folds' validation cases
(``nnUNetv2_find_best_configuration --disable_ensembling``) -> ``nnUNetv2_predict`` of held-out cases with each
fold's model -> ``nnUNetv2_apply_postprocessing`` -> :func:`comparison_markdown`: ``nnunetv2_ext.evaluation``'s
paired comparison (each fold's prediction of a held-out case is one observation), connected components per case and
wall times, for raw and for postprocessed predictions.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

STREAMED = re.compile(r"(: Epoch \d+$|Pseudo dice|Epoch time|PNSS/HESS: r=|Mean Validation Dice)")


class CommandFailed(RuntimeError):
    """A command of :func:`run_side_by_side` or :func:`timed_command` exited non-zero. The message names the command,
    its exit status and its log (:func:`run_side_by_side` also quotes the log's end)."""


def run_side_by_side(commands: Sequence[List[str]], log_paths: Sequence[str], gpus: Sequence[str] = (),
                     env: Optional[Dict[str, str]] = None, poll_s: float = 0.2) -> None:
    """Runs ``commands`` (output appended to ``log_paths[i]``): one after the other without ``gpus``; with ``gpus``,
    as many at a time as there are GPUs, each command with ``CUDA_VISIBLE_DEVICES`` set to a GPU no running command
    holds. On the first failure the others are terminated and :class:`CommandFailed` is raised. No queue, no
    scheduler state: for a cluster, print the commands and let its scheduler run them (``--dry-run`` of the
    commands that use this)."""
    if len(log_paths) != len(commands):
        raise ValueError(f"{len(commands)} commands but {len(log_paths)} log files")
    base = dict(os.environ if env is None else env)
    pending = list(zip(commands, log_paths))
    slots = [str(g) for g in gpus] or [None]
    running = []  # (process, log path, command, gpu)
    while pending or running:
        while pending and len(running) < len(slots):
            cmd, log_path = pending.pop(0)
            gpu = [g for g in slots if g not in {r[3] for r in running}][0]
            cmd_env = dict(base, CUDA_VISIBLE_DEVICES=gpu) if gpu is not None else base
            with open(log_path, "a", encoding="utf-8") as log:
                log.write(f"\n$ {' '.join(map(str, cmd))}\n")
                log.flush()
                proc = subprocess.Popen([str(c) for c in cmd], env=cmd_env, stdout=log, stderr=subprocess.STDOUT)
            running.append((proc, log_path, cmd, gpu))
        for item in list(running):
            proc, log_path, cmd, _ = item
            if proc.poll() is None:
                continue
            running.remove(item)
            if proc.returncode != 0:
                for other in running:
                    other[0].terminate()
                for other in running:
                    other[0].wait()
                with open(log_path, encoding="utf-8", errors="replace") as f:
                    tail = f.read()[-3000:]
                raise CommandFailed(f"{' '.join(map(str, cmd))} failed (exit {proc.returncode}); log {log_path}:\n"
                                    f"{tail}")
        time.sleep(poll_s)


def timed_command(cmd: Sequence, log: str) -> float:
    """Runs ``cmd`` (this interpreter's commands first on PATH), its output appended to ``log`` after a ``$ cmd``
    line; returns its wall seconds; raises :class:`CommandFailed` naming it and the log when it exits non-zero."""
    cmd = [str(c) for c in cmd]
    print("$", " ".join(cmd), flush=True)
    with open(log, "a", encoding="utf-8") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        start = time.time()
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=commands_on_path_env())
    if rc != 0:
        raise CommandFailed(f"{' '.join(cmd)} exited with {rc}; see {log}")
    return time.time() - start


def commands_on_path_env() -> Dict[str, str]:
    """``os.environ`` with this interpreter's nnU-Net commands first on PATH (a venv not activated), UTF-8 output."""
    return dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
                PYTHONUTF8="1")


def nnunet_env(work: str, processes: int, extra: Optional[dict] = None) -> Dict[str, str]:
    """nnU-Net's three folders inside ``work`` (created), workers, and this interpreter's commands on PATH; ``extra``
    is applied last (it may override any of these)."""
    dirs = {k: os.path.join(work, k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for d in dirs.values():
        os.makedirs(d, exist_ok=True)
    env = dict(commands_on_path_env(), **dirs, nnUNet_n_proc_DA=str(processes), nnUNet_def_n_proc=str(processes))
    env.update(extra or {})
    return env


class Pipeline:
    def __init__(self, work: str, dataset_id: int, env: Dict[str, str], log: str,
                 echo: Optional[Callable[[str], None]] = None):
        """``echo``: called with the lines of a training worth showing (epochs, pseudo Dice, r); None = silent."""
        self.work, self.dataset_id, self.env, self.log, self.echo = work, dataset_id, env, log, echo

    def run(self, args: Sequence, prefix: str = "") -> float:
        """Runs a command, its output appended to the log (and the interesting lines echoed); exits on failure."""
        t0 = time.time()
        with open(self.log, "a", encoding="utf-8") as f:
            f.write(f"\n$ {' '.join(map(str, args))}\n")
            f.flush()
            p = subprocess.Popen([str(a) for a in args], env=self.env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, errors="replace")
            for line in p.stdout:
                f.write(line)
                if self.echo is not None and STREAMED.search(line):
                    self.echo(f"{prefix}{line.rstrip()}")
            p.wait()
        if p.returncode:
            with open(self.log, encoding="utf-8") as f:
                tail = f.read()[-3000:]
            sys.exit(f"command failed ({p.returncode}): {' '.join(map(str, args))}\n--- end of {self.log} ---\n{tail}")
        return time.time() - t0

    def model_folder(self, dataset: str, trainer: str) -> str:
        return os.path.join(self.env["nnUNet_results"], dataset, f"{trainer}__nnUNetPlans__2d")

    def train(self, trainer: str, fold, device: str = "cpu") -> float:
        return self.run(["nnUNetv2_train", self.dataset_id, "2d", fold, "-tr", trainer, "-device", device],
                        prefix=f"[{trainer} fold {fold}] ")

    def postprocessing_file(self, dataset: str, trainer: str, folds: Sequence) -> str:
        """nnU-Net's own choice of postprocessing for this trainer, made on the folds' validation predictions."""
        self.run(["nnUNetv2_find_best_configuration", self.dataset_id, "-c", "2d", "-tr", trainer, "-f", *folds,
                  "--disable_ensembling", "-np", "1"])
        return os.path.join(self.model_folder(dataset, trainer),
                            f"crossval_results_folds_{'_'.join(map(str, folds))}", "postprocessing.pkl")

    def predict_and_postprocess(self, dataset: str, trainer: str, fold, images: str, pp_file: str, out_raw: str,
                                out_pp: str, device: str = "cpu") -> float:
        for d in (out_raw, out_pp):
            shutil.rmtree(d, ignore_errors=True)
        seconds = self.run(["nnUNetv2_predict", "-i", images, "-o", out_raw, "-d", self.dataset_id, "-c", "2d",
                            "-f", fold, "-tr", trainer, "-device", device, "--disable_tta", "-npp", "1", "-nps", "1"])
        model = self.model_folder(dataset, trainer)
        self.run(["nnUNetv2_apply_postprocessing", "-i", out_raw, "-o", out_pp, "-pp_pkl_file", pp_file, "-np", "1",
                  "-plans_json", os.path.join(model, "plans.json"), "-dataset_json",
                  os.path.join(model, "dataset.json")])
        return seconds


def connected_components(folder: str, ref_folder: Optional[str] = None) -> Dict[str, list]:
    """Foreground connected components (``evaluation.components``, full connectivity) per predicted case; with
    ``ref_folder``, each knows whether it touches the reference and its slice distance from the reference's slab."""
    import SimpleITK as sitk
    from nnunetv2_ext.evaluation.components import components
    out = {}
    for f in sorted(os.listdir(folder)):
        if f.endswith(".nii.gz"):
            seg = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(folder, f)))
            ref = None if ref_folder is None else sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(ref_folder, f)))
            out[f[:-7]] = components(seg, ref)
    return out


def flatten(folders_by_key: Dict[str, str], out: str) -> str:
    """``out/<key>_<case>`` symlinks to every case of every folder, so that several folds' predictions of the same
    held-out cases (key 'f0', 'f1', ...) become separate paired observations; the references are flattened the same
    way (the labels folder under every key). Returns ``out`` (replaced)."""
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    for key, folder in folders_by_key.items():
        for c in sorted(os.listdir(folder)):
            if c.endswith(".nii.gz"):
                os.symlink(os.path.abspath(os.path.join(folder, c)), os.path.join(out, f"{key}_{c}"))
    return out


def comparison_markdown(ref: str, folders: Dict[str, str], dataset_json: str, wall_minutes: Dict[str, float],
                        hard_cases: Dict[str, str], keys: List[str], n_bootstrap: int = 2000) -> str:
    """The evidence table: per trainer DSC mean ± std [min, max], worst-10 % mean, precision, recall, HD95 (missed
    structures counted), components per case, paired Δ DSC and Δ worst-10 % vs the first trainer with bootstrap 95 %
    intervals, wall time; then the hard held-out cases' DSC per key (fold)."""
    from nnunetv2_ext.evaluation import compare_folders, compare_results

    names = list(folders)
    results = compare_folders(ref, [folders[n] for n in names], names, dataset_json, num_processes=1, progress=False)
    comp = compare_results(results, names[0], ("DSC",), 0.1, n_bootstrap, 0)
    label_key = next(iter(comp["labels"]))
    dsc = comp["labels"][label_key]["metrics"]["DSC"]
    rows = ["| trainer | DSC mean ± std [min, max] | worst-10 % DSC | precision | recall | HD95 mm | components / case "
            "[max] | false-positive components / case (≥ 3 slices from the organ) | Δ DSC vs " + names[0] +
            " [95 % CI] | Δ worst-10 % [95 % CI] | wall time (min) |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    fp_per_case = {}
    pct = lambda v: f"{100 * v:+.2f}"  # noqa: E731
    for n in names:
        r = results[n]
        d = r.values("DSC") * 100
        found = connected_components(folders[n], ref)
        comps = {c: len(v) for c, v in found.items()}
        fps = [[x for x in v if not x.touches_reference] for v in found.values()]
        fp_per_case[n] = np.mean([len(v) for v in fps])
        far = np.mean([sum(1 for x in v if x.slice_distance is not None and x.slice_distance >= 3) for v in fps])
        hd = r.describe("HD95")
        hd_txt = f"{hd['mean']:.1f}" + (f" ({hd['n_missed']} missed)" if hd.get("n_missed") else "")
        if n == names[0]:
            delta = dw = "–"
        else:
            v = dsc["vs_baseline"][n]
            ci, wci = v["mean_diff_ci95"], v["worst_fraction_mean_diff_ci95"]
            delta = f"{pct(v['mean_diff'])} [{pct(ci[0])}, {pct(ci[1])}]"
            dw = f"{pct(v['worst_fraction_mean_diff'])} [{pct(wci[0])}, {pct(wci[1])}]"
        prec = r.values("precision")  # undefined (NaN) for an empty prediction: mean over the others, count shown
        n_empty = int(np.isnan(prec).sum())
        prec_txt = f"{100 * np.nanmean(prec):.2f}" + (f" ({n_empty} empty)" if n_empty else "") if n_empty < len(prec) \
            else "– (all empty)"
        rows.append(f"| {n} | {d.mean():.2f} ± {d.std(ddof=1):.2f} [{d.min():.2f}, {d.max():.2f}] | "
                    f"{100 * dsc['methods'][n]['worst_fraction_mean']:.2f} | {prec_txt} | "
                    f"{100 * r.values('recall').mean():.2f} | {hd_txt} | {np.mean(list(comps.values())):.1f} "
                    f"[{max(comps.values())}] | {fp_per_case[n]:.1f} ({far:.1f}) | {delta} | {dw} | "
                    f"{wall_minutes.get(n, float('nan')):.1f} |")
    more = [n for n in names[1:] if fp_per_case[n] > fp_per_case[names[0]]]
    if more:
        rows += ["", f"Reading: {', '.join(more)} {'returns' if len(more) == 1 else 'return'} more false-positive "
                     f"components per case than {names[0]} ({', '.join(f'{fp_per_case[n]:.1f}' for n in more)} vs "
                     f"{fp_per_case[names[0]]:.1f}): spurious islands; nnU-Net's postprocessing (largest component, "
                     f"when find_best_configuration chose it) removes them."]
    if hard_cases:
        rows += ["", f"Hard held-out cases, DSC (%) per {'/'.join(keys)}:", "",
                 "| trainer | " + " | ".join(f"{c} ({k})" for c, k in hard_cases.items()) + " |",
                 "|---|" + "---|" * len(hard_cases)]
        for n in names:
            rows.append(f"| {n} | " + " | ".join("/".join(
                f"{100 * results[n].values('DSC', cases=[f'{k}_{c}'])[0]:.1f}" for k in keys) for c in hard_cases)
                + " |")
    return "\n".join(rows)
