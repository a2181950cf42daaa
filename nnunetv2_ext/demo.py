"""The README demo: plain nnU-Net against PNSS/HESS on the synthetic phantom, on the CPU, in minutes.

Steps (all through nnU-Net's own commands, in a work folder of its own):

1. write the phantom (20 training cases 40x64x64 incl. 5 hard ones, 5 held-out test cases);
2. ``nnUNetv2_plan_and_preprocess -c 2d``;
3. ``nnUNetv2_train ... 2d 0`` with ``nnUNetTrainerDemo`` (plain nnU-Net, small network) and
   ``nnUNetTrainerPNSSHESSDemo`` (the same plus PNSS/HESS), 2 augmentation workers;
4. ``nnUNetv2_predict`` on the held-out cases (no test-time mirroring: CPU);
5. a table of mean ± std [min, max] DSC, precision and recall per trainer (the paper's format, computed with
   :mod:`nnunetv2_ext.evaluation`), each trainer's wall time, and the hard test cases' DSC.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

from nnunetv2_ext.phantom import PhantomConfig, write_phantom_dataset

DATASET_ID = 990
TRAINERS = ("nnUNetTrainerDemo", "nnUNetTrainerPNSSHESSDemo")


def _run(args, env, log_path):
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n$ {' '.join(map(str, args))}\n")
        log.flush()
        p = subprocess.run([str(a) for a in args], env=env, stdout=log, stderr=subprocess.STDOUT)
    if p.returncode != 0:
        with open(log_path) as f:
            tail = f.read()[-4000:]
        sys.exit(f"command failed ({p.returncode}): {' '.join(map(str, args))}\n--- end of {log_path} ---\n{tail}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Train plain nnU-Net and nnUNetTrainerPNSSHESS briefly on the synthetic "
                                            "phantom (CPU) and compare them on held-out cases.")
    p.add_argument("--work-dir", default="demo_output", help="folder for nnUNet_raw/preprocessed/results (replaced)")
    p.add_argument("--processes", type=int, default=2, help="augmentation workers (nnUNet_n_proc_DA)")
    a = p.parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):  # the table has '±': never crash on an ASCII-only locale
        sys.stdout.reconfigure(errors="backslashreplace")

    work = os.path.abspath(a.work_dir)
    shutil.rmtree(work, ignore_errors=True)
    dirs = {k: os.path.join(work, k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for d in dirs.values():
        os.makedirs(d)
    env = dict(os.environ, **dirs, nnUNet_n_proc_DA=str(a.processes), nnUNet_def_n_proc=str(a.processes))
    os.environ.update(dirs)
    log = os.path.join(work, "demo_log.txt")
    t_start = time.time()

    cfg = PhantomConfig(num_cases=20, num_test=5, shape=(40, 64, 64))
    raw = write_phantom_dataset(DATASET_ID, cfg, dirs["nnUNet_raw"])
    print(f"[demo] phantom written to {raw}; preprocessing (log: {log})", flush=True)
    _run(["nnUNetv2_plan_and_preprocess", "-d", DATASET_ID, "-c", "2d", "-np", a.processes], env, log)

    wall = {}
    for trainer in TRAINERS:
        print(f"[demo] training {trainer} on CPU ...", flush=True)
        t0 = time.time()
        _run(["nnUNetv2_train", DATASET_ID, "2d", "0", "-tr", trainer, "-device", "cpu"], env, log)
        pred = os.path.join(work, f"pred_{trainer}")
        _run(["nnUNetv2_predict", "-i", os.path.join(raw, "imagesTs"), "-o", pred, "-d", DATASET_ID, "-c", "2d",
              "-f", "0", "-tr", trainer, "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1"], env, log)
        wall[trainer] = time.time() - t0

    from nnunetv2_ext.evaluation import compare_folders, format_markdown_table
    results = compare_folders(os.path.join(raw, "labelsTs"), [os.path.join(work, f"pred_{t}") for t in TRAINERS],
                              names=list(TRAINERS), dataset_json=os.path.join(raw, "dataset.json"),
                              num_processes=1, progress=False)
    cases = json.load(open(os.path.join(raw, "phantom_cases.json")))["cases"]
    hard = {c["name"]: c["kind"] for c in cases if c["split"] == "test" and c["hard"]}

    print("\n## Held-out phantom cases (2d, fold 0 model), mean ± std [min, max] in %\n")
    print(format_markdown_table(results, metrics=("DSC", "precision", "recall")))
    print("| Trainer | wall time (train + predict) | " + " | ".join(f"DSC {c} ({k})" for c, k in hard.items()) + " |")
    print("|---|---|" + "---|" * len(hard))
    for t in TRAINERS:
        dsc = {c: results[t].values("DSC", cases=[c])[0] for c in hard}
        print(f"| {t} | {wall[t]:.0f} s | " + " | ".join(f"{100 * v:.1f}" for v in dsc.values()) + " |")
    fold = os.path.join(dirs["nnUNet_results"], os.path.basename(raw), f"{TRAINERS[1]}__nnUNetPlans__2d", "fold_0")
    print(f"\nPNSS/HESS per-epoch record: {os.path.join(fold, 'sampling_log.json')} and sampling_progress.png")
    print(f"[demo] done in {time.time() - t_start:.0f} s")


if __name__ == "__main__":
    main()
