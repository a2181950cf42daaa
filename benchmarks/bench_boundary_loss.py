"""Speed of the boundary-loss trainer against plain nnU-Net, side by side in one run, and the cost of the distance
transforms.

1. Training iterations/s of ``nnUNetTrainerBoundary`` (boundary term switched on, alpha = 1) against ``nnUNetTrainer``,
   both with the same small network (TinyTrainingMixin), the same phantom, batch size and number of augmentation
   workers (nnUNet_n_proc_DA). Each trainer is timed over the same number of iterations after a warm-up, in
   alternating repeats; the median rate counts. Target: ratio >= 0.9.
2. Signed-distance-map time (``signed_distance_maps``, edt) per 2D batch and per 3D patch at realistic nnU-Net sizes
   for pancreas CT, with scipy's ``distance_transform_edt`` on the same input for comparison.

The ratio (boundary / baseline iterations/s) is printed last.

    python benchmarks/bench_boundary_loss.py [--workers 2] [--iterations 30] [--repeats 2]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=2, help="augmentation workers (nnUNet_n_proc_DA), both trainers")
    p.add_argument("--iterations", type=int, default=30, help="timed iterations per trainer and repeat")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--cases", type=int, default=8)
    p.add_argument("--shape", type=int, nargs=3, default=(32, 128, 128), metavar=("Z", "Y", "X"))
    p.add_argument("--edt-repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--workdir", default=None, help="default: a temporary folder, removed afterwards")
    return p.parse_args(argv)


def edt_timings(repeats: int) -> dict:
    """ms per 2D batch (12 x 512 x 512, nnU-Net's 2d pancreas configuration) and per 3D patch (40 x 224 x 224)."""
    import numpy as np
    from scipy.ndimage import distance_transform_edt

    from nnunetv2_ext.transforms import signed_distance_maps

    def organ_and_tumour(shape, spacing):
        grid = np.meshgrid(*[(np.arange(n) - n / 2) * s for n, s in zip(shape, spacing)], indexing="ij")
        r2 = sum((g / (0.18 * n * s)) ** 2 for g, n, s in zip(grid, shape, spacing))
        labels = (r2 <= 1).astype(np.uint8)
        labels[r2 <= 0.2] = 2
        return labels

    def scipy_sdm(labels, classes, spacing):  # the usual hand-written way: two binary EDTs per class
        out = []
        for c in classes:
            m = labels == c
            out.append(np.where(m, -distance_transform_edt(m, sampling=spacing),
                                distance_transform_edt(~m, sampling=spacing)))
        return out

    results = {}
    cases = {"2D batch (12 x 512 x 512)": ([organ_and_tumour((512, 512), (0.8, 0.8))] * 12, (0.8, 0.8)),
             "3D patch (40 x 224 x 224)": ([organ_and_tumour((40, 224, 224), (2.5, 0.8, 0.8))], (2.5, 0.8, 0.8))}
    for name, (samples, spacing) in cases.items():
        for method, fn in (("edt", signed_distance_maps), ("scipy", scipy_sdm)):
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                for s in samples:
                    fn(s, [1, 2], spacing)
                times.append(time.perf_counter() - t0)
            results[f"{name} {method}"] = 1000 * float(np.median(times))
    return results


def prepare_dataset(args, workdir: str) -> None:
    for sub in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.makedirs(os.path.join(workdir, sub), exist_ok=True)
        os.environ[sub] = os.path.join(workdir, sub)
    from nnunetv2_ext.phantom import PhantomConfig, write_phantom_dataset
    write_phantom_dataset(999, PhantomConfig(num_cases=args.cases, shape=tuple(args.shape), lesions=True),
                          overwrite=True)
    subprocess.run([sys.executable, "-m", "nnunetv2.experiment_planning.plan_and_preprocess_entrypoints", "-d",
                    "999", "-c", "2d", "-np", "1"], check=True, stdout=subprocess.DEVNULL)


def iterations_per_second(trainer_class, args) -> tuple:
    """(iterations/s, batch size) of trainer_class on the benchmark dataset; nnU-Net's console log is silenced."""
    import contextlib

    import torch

    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    folder = os.path.join(os.environ["nnUNet_preprocessed"], maybe_convert_to_dataset_name(999))
    with open(os.path.join(folder, "nnUNetPlans.json")) as f:
        plans = json.load(f)
    with open(os.path.join(folder, "dataset.json")) as f:
        dataset_json = json.load(f)
    plans["continue_training"] = False
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        trainer = trainer_class(plans, "2d", 0, dataset_json, device=torch.device(args.device))
        trainer.on_train_start()
    if getattr(trainer, "structural_loss", None) is not None:
        trainer.structural_loss.set_epoch(trainer.num_epochs - 1, trainer.num_epochs)  # boundary term on (alpha=1)
        assert all(w > 0 for w in trainer.structural_loss.current_weights().values())
    trainer.network.train()
    for _ in range(args.warmup):
        trainer.train_step(next(trainer.dataloader_train))
    t0 = time.perf_counter()
    for _ in range(args.iterations):
        trainer.train_step(next(trainer.dataloader_train))
    rate = args.iterations / (time.perf_counter() - t0)
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        trainer.on_train_end()
    return rate, trainer.batch_size


def main(argv=None) -> None:
    args = parse_args(argv)
    os.environ["nnUNet_n_proc_DA"] = str(args.workers)
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_boundary_")
    try:
        print("distance transforms (median ms, 2 foreground classes):")
        for name, ms in edt_timings(args.edt_repeats).items():
            print(f"  {name:36s} {ms:9.1f} ms")
        prepare_dataset(args, workdir)
        # imported after the nnU-Net folders are set: nnunetv2.paths reads them at import time
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

        from nnunetv2_ext.trainers.loss_trainers import nnUNetTrainerBoundary
        from nnunetv2_ext.trainers.tiny import TinyTrainingMixin

        settings = {"tiny_batch_size": args.batch_size, "tiny_num_epochs": 1000}
        baseline = type("nnUNetTrainerBenchBaseline", (TinyTrainingMixin, nnUNetTrainer), settings)
        boundary = type("nnUNetTrainerBenchBoundary", (TinyTrainingMixin, nnUNetTrainerBoundary), settings)
        rates = {"nnUNetTrainer": [], "nnUNetTrainerBoundary": []}
        for _ in range(args.repeats):  # alternating, so that load changes hit both alike
            for name, cls in (("nnUNetTrainer", baseline), ("nnUNetTrainerBoundary", boundary)):
                rate, batch_size = iterations_per_second(cls, args)
                rates[name].append(rate)
        import numpy as np
        med = {k: float(np.median(v)) for k, v in rates.items()}
        print(f"training, 2d, patch {args.shape[1]} x {args.shape[2]}, batch {batch_size}, {args.workers} "
              f"augmentation workers, device {args.device}, {args.iterations} iterations x {args.repeats} repeats "
              f"(median):")
        for k, v in rates.items():
            print(f"  {k:24s} {med[k]:7.2f} it/s   (repeats: {', '.join(f'{x:.2f}' for x in v)})")
        print(f"ratio nnUNetTrainerBoundary / nnUNetTrainer iterations/s: "
              f"{med['nnUNetTrainerBoundary'] / med['nnUNetTrainer']:.3f}")
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
