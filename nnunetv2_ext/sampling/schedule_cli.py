"""``nnUNetv2_ext_pnss_schedule``: what the paper's epochs mean on your data, before you train.

Prints, for a trainer, dataset, configuration and fold, the epoch plan of :mod:`nnunetv2_ext.sampling.epoch_plan`:
the nnU-Net epochs each value of r lasts, |D^r|, the passes (the paper's epochs) and the HESS rounds, and at which
nnU-Net epoch r reaches 0. It reads the preprocessed segmentations once (the slice table cache) and builds no
network::

    nnUNetv2_ext_pnss_schedule -d 500 -c 2d -f 0 -tr nnUNetTrainerPNSSHESS
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import torch


def describe_plan(trainer) -> str:
    """The plan of an nnU-Net trainer instance that has the PNSS/HESS mixin (batch size set, data not loaded)."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    from nnunetv2_ext.sampling.epoch_plan import build_epoch_plan
    from nnunetv2_ext.sampling.slice_table import build_slice_table

    trainer._set_batch_size_and_oversample()
    trainer.dataset_class = infer_dataset_class(trainer.preprocessed_dataset_folder)
    dataset_tr, _ = trainer.get_tr_and_val_datasets()
    table = build_slice_table(dataset_tr, list(dataset_tr.identifiers), trainer.preprocessed_dataset_folder,
                              trainer.label_manager.ignore_label, log=lambda m: None)
    samples = trainer.num_iterations_per_epoch * trainer.batch_size
    plan = build_epoch_plan(trainer.sampling, trainer.num_epochs, samples, lambda r: int(table.selected_mask(r).sum()))
    at0 = plan.first_epoch_at(0.0)
    reach = (f"r reaches 0 at nnU-Net epoch {at0} of {plan.num_epochs} ({100 * at0 / plan.num_epochs:.1f} % of the "
             f"run); {plan.num_epochs - at0} epochs ({100 * (1 - at0 / plan.num_epochs):.1f} %) train on the positive "
             f"blocks only" if at0 >= 0 else f"r stays above 0 for all {plan.num_epochs} epochs")
    return (f"{type(trainer).__name__}: {trainer.sampling}\n"
            f"{len(table.identifiers)} training cases of fold {trainer.fold}, {table.num_units} slices along axis 0, "
            f"{int(table.k.sum())} in positive blocks ({100 * table.k.sum() / max(table.num_units, 1):.1f} %)\n"
            f"{trainer.num_iterations_per_epoch} iterations x batch {trainer.batch_size} = {samples} samples per "
            f"nnU-Net epoch, {plan.num_epochs} epochs, {plan.hess_round.sum()} HESS rounds\n"
            f"{plan.summary()}\n{reach}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="nnUNetv2_ext_pnss_schedule",
                                description="Print the PNSS/HESS epoch plan (r per nnU-Net epoch in the paper's "
                                            "epochs, |D^r|, HESS rounds) of a trainer for a preprocessed dataset.")
    p.add_argument("-d", required=True, help="dataset name or id (preprocessed with nnUNetv2_plan_and_preprocess)")
    p.add_argument("-c", required=True, help="configuration, e.g. 2d or 3d_fullres")
    p.add_argument("-f", default="0", help="fold (0-4 or 'all'; default 0)")
    p.add_argument("-tr", default="nnUNetTrainerPNSSHESS", help="trainer with PNSS/HESS (default nnUNetTrainerPNSSHESS)")
    p.add_argument("-p", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    a = p.parse_args(argv)
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from nnunetv2_ext.sampling.parameters import SamplingParameters

    nnUNet_preprocessed = os.environ.get("nnUNet_preprocessed")
    if not nnUNet_preprocessed:
        p.exit(2, f"{p.prog}: error: nnUNet_preprocessed is not set\n")
    try:
        name = maybe_convert_to_dataset_name(a.d)
    except RuntimeError as e:
        p.exit(2, f"{p.prog}: error: -d {a.d}: {e}\n")
    plans_file = os.path.join(nnUNet_preprocessed, name, a.p + ".json")
    if not os.path.isfile(plans_file):
        p.exit(2, f"{p.prog}: error: no plans {plans_file}; run nnUNetv2_plan_and_preprocess -d {a.d} first\n")
    plans = json.load(open(plans_file))
    if a.c not in plans["configurations"]:
        p.exit(2, f"{p.prog}: error: -c {a.c}: the plans have {sorted(plans['configurations'])}\n")
    if a.f != "all" and not (a.f.isdigit() and 0 <= int(a.f) <= 4):
        p.exit(2, f"{p.prog}: error: -f {a.f}: a fold is 0-4 or 'all'\n")
    data_id = plans["configurations"][a.c].get("data_identifier", f"{a.p}_{a.c}")
    if not os.path.isdir(os.path.join(nnUNet_preprocessed, name, data_id)):
        p.exit(2, f"{p.prog}: error: -c {a.c} is planned but not preprocessed "
                  f"({os.path.join(nnUNet_preprocessed, name, data_id)} missing): nnUNetv2_preprocess -d {a.d} -c {a.c}\n")
    try:
        cls = recursive_find_trainer_class_by_name(a.tr)
    except RuntimeError:
        cls = None
    if cls is None or not isinstance(getattr(cls, "sampling", None), SamplingParameters):  # a PNSS/HESS trainer
        p.exit(2, f"{p.prog}: error: -tr {a.tr}: {'not found' if cls is None else 'has no PNSS/HESS sampling'}\n")
    fold = a.f if a.f == "all" else int(a.f)
    dataset_json = json.load(open(os.path.join(nnUNet_preprocessed, name, "dataset.json")))
    results = os.environ.get("nnUNet_results")
    with tempfile.TemporaryDirectory() as tmp:  # nnU-Net's trainer writes a log file when created: not into results
        os.environ["nnUNet_results"] = tmp
        try:
            trainer = cls(dict(plans, continue_training=False), a.c, fold, dataset_json, device=torch.device("cpu"))
            try:
                text = describe_plan(trainer)
            except ValueError as e:  # e.g. fewer cases than nnU-Net's 5 folds, a fold without foreground
                p.exit(2, f"{p.prog}: error: {name} fold {a.f}: {e}\n")
            print(text)
        finally:
            if results is None:
                os.environ.pop("nnUNet_results")
            else:
                os.environ["nnUNet_results"] = results


if __name__ == "__main__":
    main(sys.argv[1:])
