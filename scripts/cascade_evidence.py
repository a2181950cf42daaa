#!/usr/bin/env python
"""Evidence for the cascade tumour variant (issue 6, requirement 6): plain nnU-Net vs nnUNetTrainerCascadeTumor,
trained briefly with the same budget on the lesion phantom, tumour Dice / sensitivity / specificity per held-out case
(the metrics of Qiu et al.'s Table 1), computed with ``nnunetv2_ext.evaluation``.

Usage (CPU, about 20-40 min with the defaults on 2 free cores)::

    python scripts/cascade_evidence.py --work-dir /tmp/cascade_evidence
    python scripts/cascade_evidence.py --work-dir /tmp/ce --epochs 20 --iterations 50 -c 3d_fullres --device cuda

What it does: writes the phantom with ``--lesions`` (organ 1, hypodense tumour 2 inside) to
``WORK/nnUNet_raw``, runs ``nnUNetv2_plan_and_preprocess``, trains fold 0 of both methods with ``nnUNetv2_train``,
predicts ``imagesTs`` with ``nnUNetv2_predict`` and evaluates the tumour label against ``labelsTs``. To give both
methods the same budget (epochs x iterations, batch size, network width) it writes two small trainer subclasses
(``nnUNetTrainerEvidencePlain`` = TinyTrainingMixin + nnUNetTrainer, ``nnUNetTrainerEvidenceCascade`` =
nnUNetTrainerCascadeTumorTiny) into ``WORK/trainers`` and adds that folder to ``nnUNet_extTrainer``.
The per-case table and the summary are printed and written to ``WORK/cascade_evidence.md`` / ``.json``.

This is a smoke-level comparison on a synthetic phantom with a tiny budget: it shows that both pipelines run end to
end and how far each gets, not the paper's margin on MSD Task07. Last run (``--num-cases 10 --num-test 4``, defaults
otherwise): tumour Dice per test case nnU-Net 0 / 0 / 0 / 0 %, cascade 33.8 / 67.9 / 50.7 / 0 % (mean sensitivity
0 vs 60.2 %, specificity 100 vs 99.96 %); see trainers_docs/nnUNetTrainerCascadeTumor.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import time

TRAINERS_TEMPLATE = '''\
"""Written by scripts/cascade_evidence.py: equal training budgets for the comparison."""
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2_ext.trainers.cascade_trainers import nnUNetTrainerCascadeTumorTiny
from nnunetv2_ext.trainers.tiny import TinyTrainingMixin


class _Budget:
    tiny_num_epochs = {epochs}
    tiny_iterations_per_epoch = {iterations}
    tiny_batch_size = {batch_size}


class nnUNetTrainerEvidencePlain(_Budget, TinyTrainingMixin, nnUNetTrainer):
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.oversample_foreground_percent = {oversampling}


class nnUNetTrainerEvidenceCascade(_Budget, nnUNetTrainerCascadeTumorTiny):
    foreground_oversampling = {oversampling}
'''

PLAIN, CASCADE = "nnUNetTrainerEvidencePlain", "nnUNetTrainerEvidenceCascade"


def run(cmd, env, log_path):
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.time()
    with open(log_path, "a", encoding="utf-8") as log:
        proc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}); see {log_path}")
    print(f"  done in {time.time() - t0:.0f} s", flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work-dir", required=True, help="folder for nnUNet_raw/preprocessed/results and the report")
    p.add_argument("-d", "--dataset-id", type=int, default=929)
    p.add_argument("-c", "--configuration", default="2d", choices=("2d", "3d_fullres"))
    p.add_argument("--num-cases", type=int, default=16)
    p.add_argument("--num-test", type=int, default=6)
    p.add_argument("--shape", type=int, nargs=3, default=(24, 48, 48), metavar=("Z", "Y", "X"))
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--iterations", type=int, default=25, help="iterations per epoch")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--oversampling", type=float, default=0.75, help="foreground oversampling of both methods")
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    if a.epochs < 3:
        raise SystemExit("--epochs must be >= 3 (the cascade needs its steps S, I and J)")

    from nnunetv2_ext.evaluation import compare_folders, format_markdown_table
    from nnunetv2_ext.phantom import PhantomConfig, write_phantom_dataset
    from nnunetv2_ext._register_trainers import TRAINER_SEARCH_FOLDER

    work = os.path.abspath(a.work_dir)
    env = dict(os.environ)
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env[k] = os.path.join(work, k)
        os.makedirs(env[k], exist_ok=True)
    trainers = os.path.join(work, "trainers")
    os.makedirs(trainers, exist_ok=True)
    with open(os.path.join(trainers, "evidence_trainers.py"), "w", encoding="utf-8") as f:
        f.write(TRAINERS_TEMPLATE.format(epochs=a.epochs, iterations=a.iterations, batch_size=a.batch_size,
                                         oversampling=a.oversampling))
    env["nnUNet_extTrainer"] = os.pathsep.join([trainers, TRAINER_SEARCH_FOLDER])
    env.setdefault("nnUNet_n_proc_DA", "2")
    log = os.path.join(work, "commands.log")
    did = str(a.dataset_id)

    cfg = PhantomConfig(num_cases=a.num_cases, num_test=a.num_test, shape=tuple(a.shape), lesions=True,
                        dataset_name="CascadeEvidence")
    raw = write_phantom_dataset(a.dataset_id, cfg, env["nnUNet_raw"], overwrite=True)
    run(["nnUNetv2_plan_and_preprocess", "-d", did, "-c", a.configuration, "-np", "1"], env, log)
    predictions = {}
    for trainer in (PLAIN, CASCADE):
        run(["nnUNetv2_train", did, a.configuration, "0", "-tr", trainer, "-device", a.device], env, log)
        out = os.path.join(work, "predictions", trainer)
        run(["nnUNetv2_predict", "-i", os.path.join(raw, "imagesTs"), "-o", out, "-d", did, "-c", a.configuration,
             "-f", "0", "-tr", trainer, "--disable_tta", "-device", a.device], env, log)
        predictions[trainer] = out

    names = {PLAIN: "nnU-Net", CASCADE: "cascade"}
    results = compare_folders(os.path.join(raw, "labelsTs"), [predictions[PLAIN], predictions[CASCADE]],
                              names=[names[PLAIN], names[CASCADE]], dataset_json=os.path.join(raw, "dataset.json"),
                              labels=[1, 2], num_processes=1, progress=False)
    metrics = ("DSC", "recall", "specificity")
    rows = ["| case | " + " | ".join(f"{m} {metric}" for m in names.values()
                                      for metric in ("tumour Dice", "sensitivity", "specificity")) + " |",
            "|" + "---|" * 7]
    per_case = {}
    first = next(iter(results.values()))
    for case in first.cases:
        cells = []
        for method, res in results.items():
            vals = {m: float(res.values(m, 2, [case])[0]) for m in metrics}
            per_case.setdefault(case, {})[method] = vals
            cells += [f"{100 * vals[m]:.1f}" for m in metrics]
        rows.append(f"| {case} | " + " | ".join(cells) + " |")
    report = "\n".join([
        f"# Cascade evidence ({a.configuration}, {a.epochs} epochs x {a.iterations} iterations, batch "
        f"{a.batch_size}, phantom {tuple(a.shape)}, {a.num_cases} training / {a.num_test} test cases)", "",
        "Tumour (label 2), per held-out case, %:", "", *rows, "",
        "Tumour summary:", "", format_markdown_table(results, metrics=metrics, label=2), "",
        "Organ (label 1) summary:", "", format_markdown_table(results, metrics=metrics, label=1), ""])
    print(report)
    with open(os.path.join(work, "cascade_evidence.md"), "w", encoding="utf-8") as f:
        f.write(report)
    with open(os.path.join(work, "cascade_evidence.json"), "w", encoding="utf-8") as f:
        json.dump({"settings": vars(a), "tumour_per_case": per_case}, f, indent=1)


if __name__ == "__main__":
    main()
