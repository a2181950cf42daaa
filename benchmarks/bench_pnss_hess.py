"""PNSS/HESS speed, measured side by side in one run on the same data and worker count (CPU).

1. Loader: batches/s of nnUNetDataLoaderPNSSHESS (default sampling: uniform over D^r plus the far-negative share,
   behind OrderedBatchStream) vs nnU-Net's nnUNetDataLoader, both with nnU-Net's training augmentation in
   NonDetMultiThreadedAugmenter workers. Target >= 0.95x.
2. Forward-mode hardness tracking: time of a training step (forward, DC+CE loss with deep supervision, backward, SGD
   step) with the per-sample DSC recording on vs off, demo-size 2d network. Target overhead <= 3 %.
3. The exact scoring pass (the paper's pass over all selected slices without augmentation, our default), measured
   for real with :func:`score_units` on the phantom's D^r: its cost relative to the training steps of the pass it
   follows (one HESS round per pass over D^r) and to a 250-iteration nnU-Net epoch.

Run it with nothing else on the machine. Runs alternate A/B several times and report medians::

    python benchmarks/bench_pnss_hess.py [--work-dir /tmp/bench_pnss] [--workers 2] [--batches 60]
"""
import argparse
import json
import os
import statistics
import subprocess
import time

import numpy as np
import torch

BATCH = 12


def prepare(work: str) -> str:
    dirs = {k: os.path.join(work, k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for d in dirs.values():
        os.makedirs(d, exist_ok=True)
    os.environ.update(dirs)
    pre = os.path.join(dirs["nnUNet_preprocessed"], "Dataset991_BenchPhantom")
    if not os.path.isdir(os.path.join(pre, "nnUNetPlans_2d")):
        from nnunetv2_ext.phantom import PhantomConfig, write_phantom_dataset
        write_phantom_dataset(991, PhantomConfig(num_cases=20, shape=(40, 64, 64), dataset_name="BenchPhantom"),
                              dirs["nnUNet_raw"], overwrite=True)
        subprocess.run(["nnUNetv2_plan_and_preprocess", "-d", "991", "-c", "2d", "-np", "2"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return pre


def setting(pre: str):
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunetv2_ext.sampling.slice_table import build_slice_table

    folder = os.path.join(pre, "nnUNetPlans_2d")
    ds_class = infer_dataset_class(folder)
    ids = sorted(ds_class.get_identifiers(folder))
    pm = PlansManager(os.path.join(pre, "nnUNetPlans.json"))
    lm = pm.get_label_manager(json.load(open(os.path.join(pre, "dataset.json"))))
    table = build_slice_table(ds_class(folder, ids), ids, folder, None, log=lambda m: None)
    return folder, ds_class, ids, pm, lm, table


def make_loaders(pre: str, workers: int):
    from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunetv2_ext.sampling.data_loader import nnUNetDataLoaderPNSSHESS
    from nnunetv2_ext.sampling.parameters import SamplingParameters
    from nnunetv2_ext.sampling.shared_state import BatchSchedule, OrderedBatchStream

    folder, ds_class, ids, pm, lm, table = setting(pre)
    patch = pm.get_configuration("2d").patch_size
    transforms = nnUNetTrainer.get_training_transforms(patch, (-np.pi, np.pi), [[1, 1], [0.5, 0.5], [0.25, 0.25]],
                                                       (0, 1), False)
    defaults = SamplingParameters()

    def plain():
        dl = nnUNetDataLoader(ds_class(folder, ids), BATCH, patch, patch, lm, 0.33, transforms=transforms)
        return NonDetMultiThreadedAugmenter(dl, None, workers, num_cached=6, seeds=None, wait_time=0.002)

    def ours():
        sched = BatchSchedule(0, 1, 10 ** 9, [False], plan_capacity=1)  # one long main phase at r = 0.6
        dl = nnUNetDataLoaderPNSSHESS(ds_class(folder, ids), BATCH, patch, patch, lm, table, [0.6],
                                      defaults.sampling, defaults.far_share, sched,
                                      oversample_foreground_percent=0.33, transforms=transforms)
        return OrderedBatchStream(NonDetMultiThreadedAugmenter(dl, None, workers, num_cached=6, seeds=None,
                                                               wait_time=0.002), sched)
    return plain, ours


def batches_per_second(factory, n: int) -> float:
    gen = factory()
    try:
        for _ in range(5):  # workers started, caches warm
            next(gen)
        t0 = time.perf_counter()
        for _ in range(n):
            next(gen)
        return n / (time.perf_counter() - t0)
    finally:
        gen._finish()


def bench_loader(pre, workers, n, repeats=3):
    plain, ours = make_loaders(pre, workers)
    a, b = [], []
    for _ in range(repeats):
        a.append(batches_per_second(plain, n))
        b.append(batches_per_second(ours, n))
    return statistics.median(a), statistics.median(b)


def demo_network(pm, lm):
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    from nnunetv2_ext.trainers.small_variants import DemoTrainingMixin as D
    from nnunetv2_ext.trainers.tiny import shrink_features

    cm = pm.get_configuration("2d")
    kw = dict(cm.network_arch_init_kwargs)
    kw["features_per_stage"] = shrink_features(kw["features_per_stage"], D.tiny_feature_divisor, D.tiny_max_features)
    torch.manual_seed(0)
    net = get_network_from_plans(cm.network_arch_class_name, kw, cm.network_arch_init_kwargs_req_import, 1,
                                 lm.num_segmentation_heads, deep_supervision=True)
    return net, cm


def bench_train_step(pm, lm, steps=20, repeats=6):
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    from nnunetv2_ext.sampling.hess import DiceRecordingLoss, per_sample_dice

    net, cm = demo_network(pm, lm)
    n_out = len(net.decoder.stages)
    weights = np.array([1 / (2 ** i) for i in range(n_out)])
    weights[-1] = 0
    base = DeepSupervisionWrapper(DC_and_CE_loss({"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False},
                                                 {}, 1, 1, ignore_label=None,
                                                 dice_class=MemoryEfficientSoftDiceLoss), weights / weights.sum())
    recorder = DiceRecordingLoss(base, lm.has_regions, lm.ignore_label)
    opt = torch.optim.SGD(net.parameters(), 1e-3, momentum=0.99, nesterov=True)
    x = torch.randn(BATCH, 1, *cm.patch_size)
    with torch.no_grad():
        shapes = [o.shape[2:] for o in net(x)]
    t = [(torch.rand(BATCH, 1, *s) > 0.9).float() for s in shapes]

    # CPU time of this process (one torch thread): other jobs on a shared machine barely change it
    def step(record: bool) -> float:
        recorder.record = record
        t0 = time.process_time()
        opt.zero_grad(set_to_none=True)
        out = net(x)
        loss = recorder(out, t)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
        opt.step()
        if record:
            recorder.last_sample_dsc.cpu()  # worst case: a sync every step (the trainer syncs once per epoch)
        return time.process_time() - t0

    step(False)
    # alternate on/off every step so that load changes on a shared machine hit both equally
    off, on = [], []
    for i in range(steps * repeats):
        (on if i % 2 else off).append(step(bool(i % 2)))
    out = net(x)
    t0 = time.process_time()
    for _ in range(steps):
        per_sample_dice(out[0].detach(), t[0], lm.has_regions, lm.ignore_label)
    dsc_alone = (time.process_time() - t0) / steps
    return statistics.median(off), statistics.median(on), dsc_alone, net


def bench_exact_pass(pre, pm, lm, net, r=0.6, repeats=3):
    """Wall time of the real scoring pass over D^r (2x the training batch, no deep supervision, no gradients)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunetv2_ext.sampling.exact_scoring import score_units

    folder, ds_class, ids, _, _, table = setting(pre)
    transforms = nnUNetTrainer.get_validation_transforms(None, False, lm.foreground_labels, None, None)
    units = np.flatnonzero(table.selected_mask(r))
    net.eval()
    net.decoder.deep_supervision = False
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        score_units(units, table, ds_class(folder, ids), transforms, net, pm.get_configuration("2d").patch_size,
                    2 * BATCH, torch.device("cpu"), lm.has_regions, lm.ignore_label)
        times.append(time.process_time() - t0)
    return statistics.median(times), len(units)


def main():
    p = argparse.ArgumentParser(description="PNSS/HESS loader, hardness tracking and exact-pass cost (CPU).")
    p.add_argument("--work-dir", default="/tmp/bench_pnss_hess", help="where the phantom and nnU-Net folders go")
    p.add_argument("--workers", type=int, default=2, help="augmentation workers for the loader comparison")
    p.add_argument("--batches", type=int, default=60, help="batches per loader measurement")
    p.add_argument("--skip-loader", action="store_true", help="only the step and exact-pass measurements")
    a = p.parse_args()
    torch.set_num_threads(1)
    pre = prepare(a.work_dir)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread, {os.cpu_count()} CPUs, workers={a.workers}, "
          f"phantom 20 cases 40x64x64, 2d, batch {BATCH}, demo network", flush=True)
    plain_bps, ours_bps = (1.0, 1.0) if a.skip_loader else bench_loader(pre, a.workers, a.batches)
    print(f"loader: nnU-Net {plain_bps:.2f} batches/s, PNSS/HESS {ours_bps:.2f} batches/s", flush=True)
    _, _, _, pm, lm, _ = setting(pre)
    off, on, dsc_alone, net = bench_train_step(pm, lm)
    print(f"train step: {off * 1000:.1f} ms without, {on * 1000:.1f} ms with forward hardness tracking (median of "
          f"alternating steps); per-sample DSC alone {dsc_alone * 1000:.2f} ms = {100 * dsc_alone / off:.2f} % of a "
          f"step", flush=True)
    exact, n_units = bench_exact_pass(pre, pm, lm, net)
    pass_training = n_units / BATCH * off  # the training steps of one pass over D^r (data loading not counted)
    epoch = 250 * off
    print(f"exact scoring pass over |D^0.6| = {n_units} slices: {exact:.2f} s CPU = {100 * exact / pass_training:.1f} % "
          f"of the training steps of that pass ({n_units / BATCH:.0f} steps), {100 * exact / epoch:.1f} % of a "
          f"250-iteration epoch's steps")
    print(f"RATIO loader PNSS/HESS vs nnU-Net: {ours_bps / plain_bps:.3f}x (target >= 0.95)")
    print(f"RATIO train step with/without forward hardness tracking: {on / off:.3f}x (target <= 1.03)")
    print(f"RATIO exact pass / training steps of the pass it follows: {exact / pass_training:.3f}")


if __name__ == "__main__":
    main()
