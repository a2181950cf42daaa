"""PNSS/HESS ablation against plain nnU-Net at equal iteration budget, on the realistic phantom (CPU).

Everything goes through nnU-Net's own commands (:mod:`nnunetv2_ext.pipeline`): ``nnUNetv2_train`` per trainer and
fold; ``nnUNetv2_find_best_configuration`` per trainer (nnU-Net's postprocessing, chosen on the folds' validation
cases); ``nnUNetv2_predict`` of the held-out cases with each fold's model; ``nnUNetv2_apply_postprocessing``; then
``nnUNetv2_ext_compare`` on raw and on postprocessed predictions (each fold's prediction of a held-out case is one
paired observation), connected components per case and wall time per trainer.

Trainer sets (``--set``):

- ``main``: plain nnU-Net (nnUNetTrainerDemo), PNSS, HESS and PNSS+HESS with their defaults (issue 9, item 5),
  and hard-sample pre-training (issue 11).
- ``design``: PNSS+HESS with one setting changed from the defaults at a time (sampling mode, far negatives, final
  phase, forward scoring with its agreement to the exact pass, nnU-Net epochs as the schedule's unit), and the
  paper's exact settings; plain nnU-Net and the default PNSS+HESS are the references.

All trainers share the demo's network, batch and iteration budget (12 epochs x 40 iterations, batch 12); PNSS/HESS
mini epochs are paid for by the next epoch (budget 'neutral'), except in the 'paper' row (mini epochs on top).

    python scripts/pnss_hess_ablation.py --set main --work-dir /tmp/pnss_ablation --out docs/evidence/pnss_hess

Run it with nothing else on the machine (wall times are reported). Trainings already completed in the work folder
are reused.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

from nnunetv2_ext.pipeline import Pipeline, comparison_markdown, flatten, nnunet_env

DATASET_ID = 992
DATASET = f"Dataset{DATASET_ID:03d}_PhantomAblation"
MAIN = ["nnUNetTrainerDemo", "nnUNetTrainerPNSSDemo", "nnUNetTrainerHESSDemo", "nnUNetTrainerPNSSHESSDemo",
        "nnUNetTrainerHardPretrainDemo"]
DESIGN = {  # name (a trainer in nnunetv2_ext.trainers.small_variants): what it tests
    "AblSlice": "the paper's draw: uniform over D^r, no oversampling",
    "AblCase": "nnU-Net's case-uniform draw + oversampling, restricted to the slab",
    "AblFar0": "no far negatives kept (the paper)",
    "AblFinalFull": "no far negatives; last 20 % at r = 1",
    "AblForward": "forward scores (age 1 round); agreement with the exact pass logged",
    "AblNnunetEpochs": "L(0.2, 2) in nnU-Net epochs (the old mapping)",
}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="PNSS/HESS ablation vs plain nnU-Net at equal iteration budget (phantom).")
    p.add_argument("--set", choices=("main", "design", "all"), default="main", help="which trainers (see docstring)")
    p.add_argument("--folds", type=int, nargs="+", default=[0, 1], help="folds of nnU-Net's 5-fold split")
    p.add_argument("--work-dir", default="/tmp/pnss_hess_ablation", help="nnU-Net folders, predictions, logs")
    p.add_argument("--out", default=None, help="also write the tables here (e.g. docs/evidence/pnss_hess)")
    p.add_argument("--processes", type=int, default=2, help="augmentation workers (nnUNet_n_proc_DA)")
    p.add_argument("--num-cases", type=int, default=24, help="phantom training cases")
    p.add_argument("--num-test", type=int, default=12, help="phantom held-out cases")
    p.add_argument("--skip", nargs="+", default=[], help="trainers of the set not to run (named in the report)")
    a = p.parse_args(argv)
    work = os.path.abspath(a.work_dir)
    env = nnunet_env(work, a.processes)  # the design rows are trainers of nnunetv2_ext.trainers.small_variants
    os.environ.update({k: env[k] for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")})
    pipe = Pipeline(work, DATASET_ID, env, os.path.join(work, "ablation_log.txt"))
    raw = os.path.join(env["nnUNet_raw"], DATASET)
    if not os.path.isdir(os.path.join(env["nnUNet_preprocessed"], DATASET, "nnUNetPlans_2d")):
        from nnunetv2_ext.phantom import PhantomConfig, write_phantom_dataset
        write_phantom_dataset(DATASET_ID, PhantomConfig.realistic(num_cases=a.num_cases, num_test=a.num_test,
                                                                  shape=(40, 64, 64), dataset_name="PhantomAblation"),
                              env["nnUNet_raw"], overwrite=True)
        pipe.run(["nnUNetv2_plan_and_preprocess", "-d", DATASET_ID, "-c", "2d", "-np", a.processes])

    if a.set == "main":
        names = MAIN
    else:
        names = (MAIN if a.set == "all" else MAIN[:1] + MAIN[3:4]) + list(DESIGN) + ["AblPaper"]
    unknown = sorted(set(a.skip) - set(names))
    if unknown:
        p.error(f"--skip: {unknown} not in the set {a.set!r} ({names})")
    names = [t for t in names if t not in a.skip]
    timing_file = os.path.join(work, "wall_times.json")
    wall = json.load(open(timing_file)) if os.path.isfile(timing_file) else {}
    folds = [str(f) for f in a.folds]
    t_start = time.time()
    for t in names:
        for fold in folds:
            key = f"{t}/fold_{fold}"
            done = os.path.join(pipe.model_folder(DATASET, t), f"fold_{fold}", "checkpoint_final.pth")
            if not (os.path.isfile(done) and key in wall):
                print(f"[ablation] training {t} fold {fold}", flush=True)
                wall[key] = {"train_s": pipe.train(t, fold)}
                json.dump(wall, open(timing_file, "w"), indent=1)
        print(f"[ablation] find_best_configuration, predict, postprocess: {t}", flush=True)
        pp_file = pipe.postprocessing_file(DATASET, t, folds)
        for fold in folds:
            wall[f"{t}/fold_{fold}"]["predict_s"] = pipe.predict_and_postprocess(
                DATASET, t, fold, os.path.join(raw, "imagesTs"), pp_file,
                os.path.join(work, "pred", t, "raw", f"fold_{fold}"), os.path.join(work, "pred", t, "pp", f"fold_{fold}"))
        json.dump(wall, open(timing_file, "w"), indent=1)

    cases = json.load(open(os.path.join(raw, "phantom_cases.json")))["cases"]
    hard = {c["name"]: c["kind"] for c in cases if c["split"] == "test" and c["hard"]}
    keys = [f"f{f}" for f in folds]
    minutes = {t: sum(wall[f"{t}/fold_{f}"]["train_s"] + wall[f"{t}/fold_{f}"]["predict_s"] for f in folds) / 60
               for t in names}
    n_test = sum(c["split"] == "test" for c in cases)
    parts = [f"# PNSS/HESS ablation ({a.set})\n",
             f"`python scripts/pnss_hess_ablation.py --set {a.set} --folds {' '.join(folds)}`; realistic phantom "
             f"{DATASET} ({a.num_cases} training, {n_test} held-out cases); each fold's model predicts every held-out "
             f"case: n = {len(folds) * n_test} paired observations. Budget of every trainer: 12 epochs x 40 iterations, "
             f"batch 12. Wall time = training + prediction over {len(folds)} folds, 2-core CPU.\n"]
    if a.skip:
        parts.append(f"Not run in this invocation (`--skip`): {', '.join(a.skip)}.\n")
    ref = flatten({k: os.path.join(raw, "labelsTs") for k in keys}, os.path.join(work, "flat", "ref"))
    for kind, title in (("raw", "Raw predictions (what nnUNetv2_predict returns)"),
                        ("pp", "After nnU-Net's postprocessing (find_best_configuration, apply_postprocessing)")):
        flat = {t: flatten({k: os.path.join(work, "pred", t, kind, f"fold_{f}") for k, f in zip(keys, folds)},
                           os.path.join(work, "flat", kind, t)) for t in names}
        report = os.path.join(work, f"compare_{a.set}_{kind}")
        shutil.rmtree(report, ignore_errors=True)
        pipe.run(["nnUNetv2_ext_compare", ref, *flat.values(), "--names", *names, "-djfile",
                  os.path.join(raw, "dataset.json"), "-o", report, "--metrics", "DSC,precision,recall,HD95", "-np",
                  "1", "--no-progress"])
        parts += [f"## {title}\n", comparison_markdown(ref, flat, os.path.join(raw, "dataset.json"), minutes, hard,
                                                       keys), f"\nFull report: `{report}`.\n"]
    parts.append(agreement_markdown(pipe, names, folds))
    parts.append(f"\nTotal run time of this invocation: {(time.time() - t_start) / 60:.0f} min.\n")
    text = "\n".join(parts)
    print(text)
    with open(os.path.join(work, f"ablation_{a.set}.md"), "w", encoding="utf-8") as f:
        f.write(text)
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        shutil.copy(os.path.join(work, f"ablation_{a.set}.md"), a.out)


def agreement_markdown(pipe: Pipeline, names, folds) -> str:
    rows = []
    for t in names:
        for f in folds:
            slog = os.path.join(pipe.model_folder(DATASET, t), f"fold_{f}", "sampling_log.json")
            if os.path.isfile(slog):
                rows += [(t, f, r["epoch"], r["agreement"]) for r in json.load(open(slog)) if r.get("agreement")]
    if not rows:
        return ""
    out = ["## Forward scores vs the exact pass, per HESS round\n",
           "| trainer | fold | epoch | Spearman ρ | hard-set Jaccard | coverage of D^r | hard (forward / exact) |",
           "|---|---|---|---|---|---|---|"]
    for t, f, e, ag in rows:
        out.append(f"| {t} | {f} | {e} | {ag['spearman']:.3f} | {ag['hard_jaccard']:.3f} | "
                   f"{100 * ag['coverage']:.0f} % | {ag['n_hard_forward']} / {ag['n_hard_exact']} |")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
