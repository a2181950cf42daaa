"""The README demo: plain nnU-Net against PNSS/HESS on the realistic phantom, through nnU-Net's full pipeline.

Steps (all nnU-Net's own commands, in a work folder of its own; see :mod:`nnunetv2_ext.pipeline`):

1. write the realistic phantom (24 training cases incl. 6 hard ones, 12 held-out cases incl. 3 hard ones);
2. ``nnUNetv2_plan_and_preprocess -c 2d``;
3. ``nnUNetv2_train ... 2d 0`` with ``nnUNetTrainerDemo`` (plain nnU-Net, small network) and
   ``nnUNetTrainerPNSSHESSDemo`` (the same network and iteration budget plus PNSS/HESS with its defaults), with 2
   augmentation workers; their epoch lines are shown as they come;
4. ``nnUNetv2_find_best_configuration`` per trainer (the postprocessing nnU-Net chooses on fold 0's validation
   cases), ``nnUNetv2_predict`` of the held-out cases (no test-time mirroring), ``nnUNetv2_apply_postprocessing``;
5. for raw and postprocessed predictions: DSC mean ± std [min, max], worst-10 %, precision, recall, HD95, connected
   components per case, the paired difference with its bootstrap interval, wall times, and the hard cases' DSC.

The work folder is created by the demo and marked as such; an existing folder the demo did not create is never
touched (the demo stops with exit code 2).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

from nnunetv2_ext.io_atomic import OutputFolderError, check_output_folder, mark_folder, written_by_us
from nnunetv2_ext.phantom import PhantomConfig, write_phantom_dataset
from nnunetv2_ext.pipeline import Pipeline, comparison_markdown, flatten, nnunet_env

DATASET_ID = 990
DATASET = f"Dataset{DATASET_ID:03d}_Phantom"
TRAINERS = ("nnUNetTrainerDemo", "nnUNetTrainerPNSSHESSDemo")
LEGACY_MARKER = ".nnunetv2_ext_demo"
OWN = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "pred", "flat", "demo_log.txt", "demo_results.md",
       LEGACY_MARKER)


def prepare_work_dir(work: str, overwrite: bool = False) -> None:
    """Creates ``work`` by the package's output-folder rule (``io_atomic.check_output_folder``: new or empty is fine;
    with files only with ``overwrite`` and only when the demo wrote it), then removes what an earlier demo run left
    (only the demo's own entries). Raises OutputFolderError, touching nothing."""
    if overwrite and os.path.isfile(os.path.join(work, LEGACY_MARKER)) and written_by_us(work) is None:
        mark_folder(work, "nnUNetv2_ext_demo")  # a work folder of a demo from before the shared marker
    check_output_folder(work, [], overwrite, "--work-dir")
    os.makedirs(work, exist_ok=True)
    for name in OWN:
        path = os.path.join(work, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
    mark_folder(work, "nnUNetv2_ext_demo")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="nnUNetv2_ext_demo",
                                description="Train plain nnU-Net and nnUNetTrainerPNSSHESS at the same budget on the "
                                            "realistic phantom and compare them on held-out cases, raw and after "
                                            "nnU-Net's postprocessing.")
    p.add_argument("--work-dir", default="demo_output",
                   help="folder for nnUNet_raw/preprocessed/results and predictions (default demo_output); a new or "
                        "empty folder, or with --overwrite one the demo wrote before (a folder it did not write is "
                        "never touched)")
    p.add_argument("--overwrite", action="store_true",
                   help="rerun in a --work-dir of an earlier demo run, replacing its results")
    p.add_argument("--processes", type=int, default=2, help="augmentation workers, nnUNet_n_proc_DA (default 2)")
    p.add_argument("-device", choices=("cpu", "cuda", "mps"), default="cpu",
                   help="device for training and prediction, as nnUNetv2_train's -device (default cpu)")
    a = p.parse_args(argv)
    if a.processes < 0:
        p.exit(2, f"{p.prog}: error: --processes must be >= 0, got {a.processes}\n")
    if hasattr(sys.stdout, "reconfigure"):  # the table has '±': never crash on an ASCII-only locale
        sys.stdout.reconfigure(errors="backslashreplace")
    work = os.path.abspath(a.work_dir)
    try:
        prepare_work_dir(work, a.overwrite)
    except OutputFolderError as e:
        p.exit(2, f"{p.prog}: error: {e} (nothing was changed)\n")
    env = nnunet_env(work, a.processes)
    os.environ.update({k: env[k] for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")})
    log = os.path.join(work, "demo_log.txt")
    pipe = Pipeline(work, DATASET_ID, env, log, echo=lambda line: print(line, flush=True))
    t_start = time.time()

    raw = write_phantom_dataset(DATASET_ID, PhantomConfig.realistic(num_cases=24, num_test=12, shape=(40, 64, 64)),
                                env["nnUNet_raw"])
    print(f"[demo] phantom written to {raw}; preprocessing (full log: {log})", flush=True)
    pipe.run(["nnUNetv2_plan_and_preprocess", "-d", DATASET_ID, "-c", "2d", "-np", max(1, a.processes)])

    minutes = {}
    for trainer in TRAINERS:
        print(f"[demo] training {trainer} on {a.device} ...", flush=True)
        seconds = pipe.train(trainer, 0, a.device)
        print(f"[demo] {trainer}: postprocessing choice (find_best_configuration), prediction", flush=True)
        pp_file = pipe.postprocessing_file(DATASET, trainer, [0])
        seconds += pipe.predict_and_postprocess(DATASET, trainer, 0, os.path.join(raw, "imagesTs"), pp_file,
                                                os.path.join(work, "pred", trainer, "raw"),
                                                os.path.join(work, "pred", trainer, "pp"), a.device)
        minutes[trainer] = seconds / 60

    cases = json.load(open(os.path.join(raw, "phantom_cases.json")))["cases"]
    hard = {c["name"]: c["kind"] for c in cases if c["split"] == "test" and c["hard"]}
    ref = flatten({"f0": os.path.join(raw, "labelsTs")}, os.path.join(work, "flat", "ref"))
    parts = []
    for kind, title in (("raw", "raw predictions (nnUNetv2_predict)"),
                        ("pp", "after nnU-Net's postprocessing (find_best_configuration + apply_postprocessing)")):
        flat = {t: flatten({"f0": os.path.join(work, "pred", t, kind)}, os.path.join(work, "flat", kind, t))
                for t in TRAINERS}
        parts += [f"\n## 12 held-out phantom cases, fold 0 models, {title}\n",
                  comparison_markdown(ref, flat, os.path.join(raw, "dataset.json"), minutes, hard, ["f0"])]
    fold = os.path.join(pipe.model_folder(DATASET, TRAINERS[1]), "fold_0")
    parts.append(f"\nPNSS/HESS per-epoch record: {os.path.join(fold, 'sampling_log.json')} and "
                 f"sampling_progress.png\n[demo] done in {(time.time() - t_start) / 60:.1f} min")
    text = "\n".join(parts)
    with open(os.path.join(work, "demo_results.md"), "w", encoding="utf-8") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
