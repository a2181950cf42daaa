"""PNSS/HESS speed, measured side by side in one run on the same data and worker count (CPU).

1. Loader: batches/s of nnUNetDataLoaderPNSSHESS (behind OrderedBatchStream) vs nnU-Net's nnUNetDataLoader, both with
   nnU-Net's training augmentation in NonDetMultiThreadedAugmenter workers. Target >= 0.95x.
2. Hardness tracking: time of a training step (forward, DC+CE loss with deep supervision, backward, SGD step) with
   the per-sample DSC recording on vs off, small 2d network. Target overhead <= 3 %.
3. Exact scoring mode (the paper's pass over all selected slices without augmentation): its cost per epoch relative
   to the epoch's training steps, for the phantom's slice count.

Runs alternate A/B several times and report medians. Usage::

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


def make_loaders(pre: str, workers: int, batch_size: int):
    from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunetv2_ext.sampling.data_loader import nnUNetDataLoaderPNSSHESS
    from nnunetv2_ext.sampling.pnss import PNSSSchedule
    from nnunetv2_ext.sampling.shared_state import BatchSchedule, OrderedBatchStream
    from nnunetv2_ext.sampling.slice_table import build_slice_table

    folder = os.path.join(pre, "nnUNetPlans_2d")
    ds_class = infer_dataset_class(folder)
    ids = sorted(ds_class.get_identifiers(folder))
    pm = PlansManager(os.path.join(pre, "nnUNetPlans.json"))
    lm = pm.get_label_manager(json.load(open(os.path.join(pre, "dataset.json"))))
    patch = pm.get_configuration("2d").patch_size
    transforms = nnUNetTrainer.get_training_transforms(patch, (-np.pi, np.pi), [[1, 1], [0.5, 0.5], [0.25, 0.25]],
                                                       (0, 1), False)

    def plain():
        dl = nnUNetDataLoader(ds_class(folder, ids), batch_size, patch, patch, lm, 0.33, transforms=transforms)
        return NonDetMultiThreadedAugmenter(dl, None, workers, num_cached=6, seeds=None, wait_time=0.002)

    def ours():
        ds = ds_class(folder, ids)
        table = build_slice_table(ds, ids, folder, None, log=lambda m: None)
        sched = BatchSchedule(2, 1000, 10 ** 9, hess_enabled=False, plan_capacity=1)  # epoch 2: r = 0.6
        dl = nnUNetDataLoaderPNSSHESS(ds, batch_size, patch, patch, lm, table, PNSSSchedule(0.2, 1), sched,
                                      oversample_foreground_percent=0.33, transforms=transforms)
        return OrderedBatchStream(NonDetMultiThreadedAugmenter(dl, None, workers, num_cached=6, seeds=None,
                                                               wait_time=0.002), sched)
    return plain, ours, pm, lm


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
    plain, ours, _, _ = make_loaders(pre, workers, batch_size=12)
    a, b = [], []
    for _ in range(repeats):
        a.append(batches_per_second(plain, n))
        b.append(batches_per_second(ours, n))
    return statistics.median(a), statistics.median(b)


def bench_train_step(pre, steps=20, repeats=6):
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    from nnunetv2_ext.sampling.hess import per_sample_dice
    from nnunetv2_ext.sampling.trainer_mixin import DiceRecordingLoss
    from nnunetv2_ext.trainers.tiny import shrink_features

    _, _, pm, lm = make_loaders(pre, 1, 12)
    cm = pm.get_configuration("2d")
    kw = dict(cm.network_arch_init_kwargs)
    kw["features_per_stage"] = shrink_features(kw["features_per_stage"], 2, 128)
    torch.manual_seed(0)
    net = get_network_from_plans(cm.network_arch_class_name, kw, cm.network_arch_init_kwargs_req_import, 1, 2,
                                 deep_supervision=True)
    n_out = len(net.decoder.stages)
    weights = np.array([1 / (2 ** i) for i in range(n_out)])
    weights[-1] = 0
    base = DeepSupervisionWrapper(DC_and_CE_loss({"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False},
                                                 {}, 1, 1, ignore_label=None,
                                                 dice_class=MemoryEfficientSoftDiceLoss), weights / weights.sum())
    recorder = DiceRecordingLoss(base, lm.has_regions, lm.ignore_label)
    opt = torch.optim.SGD(net.parameters(), 1e-3, momentum=0.99, nesterov=True)
    x = torch.randn(12, 1, *cm.patch_size)
    with torch.no_grad():
        shapes = [o.shape[2:] for o in net(x)]
    t = [(torch.rand(12, 1, *s) > 0.9).float() for s in shapes]

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
    # exact mode: a no-augmentation forward pass per batch of selected slices
    net.eval()
    with torch.no_grad():
        t0 = time.perf_counter()
        for _ in range(steps):
            net(x)
        fwd = (time.perf_counter() - t0) / steps
    return statistics.median(off), statistics.median(on), fwd, dsc_alone


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--work-dir", default="/tmp/bench_pnss_hess")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batches", type=int, default=60)
    p.add_argument("--skip-loader", action="store_true")
    a = p.parse_args()
    pre = prepare(a.work_dir)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"workers={a.workers}, phantom 20 cases 40x64x64, 2d, batch 12")
    plain_bps, ours_bps = (1.0, 1.0) if a.skip_loader else bench_loader(pre, a.workers, a.batches)
    print(f"loader: nnU-Net {plain_bps:.2f} batches/s, PNSS/HESS {ours_bps:.2f} batches/s")
    off, on, fwd, dsc_alone = bench_train_step(pre)
    print(f"train step: {off * 1000:.1f} ms without, {on * 1000:.1f} ms with hardness tracking (median of "
          f"alternating steps); per-sample DSC alone {dsc_alone * 1000:.2f} ms = {100 * dsc_alone / off:.2f} % of a step")
    n_selected, iters = 20 * 40 * 0.6, 250  # r = 0.6 on this phantom; nnU-Net's 250 iterations per epoch
    exact = n_selected / 12 * fwd / (iters * off)
    print(f"exact scoring pass (every epoch, {n_selected:.0f} selected slices, forward {fwd * 1000:.1f} ms/batch): "
          f"+{100 * exact:.1f} % of a 250-iteration epoch; forward mode: +{100 * (on / off - 1):.1f} %")
    print(f"RATIO loader PNSS/HESS vs nnU-Net: {ours_bps / plain_bps:.3f}x (target >= 0.95)")
    print(f"RATIO train step with/without hardness tracking: {on / off:.3f}x (target <= 1.03)")


if __name__ == "__main__":
    main()
