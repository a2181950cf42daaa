"""The PNSS/HESS loader with nnU-Net's multi-process augmenter (2 workers): every batch is built for the phase the
schedule assigns to it, including mini epochs whose plan is published by the main process while workers run; with
seeded, ordered workers (benchmark runs) the same seeds give the same batches."""
import os

import numpy as np
import pytest
from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter

from nnunetv2_ext.sampling.data_loader import nnUNetDataLoaderPNSSHESS
from nnunetv2_ext.sampling.shared_state import BatchSchedule, OrderedBatchStream


def _three_epochs(p, seeds=None):
    """Three epochs (r = 1, 0.5, 0; 4 main iterations of batch 4, a mini epoch of 2 iterations after each) through
    2 workers: nnU-Net's unordered augmenter without seeds, batchgenerators' ordered one with them. Checks every
    batch against its phase and returns [(batch index, worker, sampled units, sum of the augmented images)]."""
    ds, ids, lm, patch, table = p.ds, p.ids, p.lm, p.patch, p.table
    assert (table.k > 0).all() and (table.num_slices > table.k).all()  # phantom: negatives at both ends

    ratios = [1.0, 0.5, 0.0]
    n_main, bs = 4, 4
    # neutral budget: each epoch pays for the previous epoch's 2 mini iterations
    sched = BatchSchedule(0, 3, n_main, hess_rounds=[True, True, True], plan_capacity=64, neutral_budget=True)
    dl = nnUNetDataLoaderPNSSHESS(ds, bs, patch, patch, lm, table, ratios, "slice", 0.5, sched,
                                  oversample_foreground_percent=0.33)
    dl.number_of_threads_in_multithreaded = 2  # as build_dataloaders sets it
    augmenter = (NonDetMultiThreadedAugmenter(dl, None, 2, num_cached=4, seeds=None) if seeds is None else
                 MultiThreadedAugmenter(dl, None, 2, 2, seeds))
    stream = OrderedBatchStream(augmenter, sched)
    main_pid = os.getpid()
    seen = []
    try:
        # the 'hard' units are the first slice of every case: negatives that PNSS drops at r < 1, so they can only
        # show up in a mini batch if the workers received the plan
        far_negatives = np.array([table.unit(c, 0) for c in range(len(ids))])
        n_far = 0
        for epoch in range(3):
            selected = table.selected_mask(ratios[epoch])
            for it in range(n_main - (2 if epoch else 0)):
                batch = next(stream)
                seen.append((int(batch["batch_index"]), int(batch["worker"]), batch["units"].tolist(),
                             round(float(batch["data"].sum()), 3)))
                assert (batch["epoch"], batch["phase"]) == (epoch, "main")
                assert batch["data"].shape[0] == bs
                if epoch == 0:
                    assert selected[batch["units"]].all()  # r = 1: nothing dropped, no far negative
                n_far += int((~selected[batch["units"]]).sum())
            plan = far_negatives[np.random.default_rng(epoch).permutation(len(ids))][:8].reshape(2, bs)
            sched.publish_mini_epoch(epoch, plan)
            for it in range(2):
                batch = next(stream)
                seen.append((int(batch["batch_index"]), int(batch["worker"]), batch["units"].tolist(),
                             round(float(batch["data"].sum()), 3)))
                assert (batch["epoch"], batch["phase"]) == (epoch, "mini")
                assert batch["units"].tolist() == plan[it].tolist()
                # these slices carry no foreground: the targets confirm the workers cropped exactly them
                assert int(batch["target"].max()) == 0
        # epochs 1 and 2: 2 x 4 main samples each, half of them far negatives on average
        assert 2 <= n_far <= 14, n_far
        workers = stream.augmenter._processes  # the batches above really came from 2 live worker processes
        assert len(workers) == 2 and all(w.is_alive() and w.pid != main_pid for w in workers)
    finally:
        stream._finish()
    # batch b is built by worker b mod 2, whichever worker is faster
    assert [b for b, _, _, _ in seen] == list(range(len(seen)))
    assert all(w == b % 2 for b, w, _, _ in seen)
    return seen


def test_workers_follow_r_and_published_hard_set(phantom_2d_loading):
    _three_epochs(phantom_2d_loading)


def test_seeded_workers_sample_the_same_batches_again(phantom_2d_loading):
    first = _three_epochs(phantom_2d_loading, seeds=[1000, 1001])
    assert _three_epochs(phantom_2d_loading, seeds=[1000, 1001]) == first
    assert _three_epochs(phantom_2d_loading, seeds=[2000, 2001]) != first


def test_a_loader_not_told_of_its_workers_fails_loudly():
    from nnunetv2_ext.sampling.shared_state import BatchSchedule as S
    s = S(0, 2, 3, hess_rounds=[False, False], plan_capacity=4)
    assert [s.claim(1, 2), s.claim(1, 2), s.claim(1, 2)] == [1, 3, 5]  # worker 1 of 2: its 1st, 2nd, 3rd batch
    with pytest.raises(RuntimeError, match="number_of_threads_in_multithreaded"):
        s.claim(1, 1)
