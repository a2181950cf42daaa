"""The PNSS/HESS loader with nnU-Net's multi-process augmenter (2 workers): every batch is built for the phase the
schedule assigns to it, including mini epochs whose plan is published by the main process while workers run."""
import os

import numpy as np
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter

from nnunetv2_ext.sampling.data_loader import nnUNetDataLoaderPNSSHESS
from nnunetv2_ext.sampling.shared_state import BatchSchedule, OrderedBatchStream


def test_workers_follow_r_and_published_hard_set(phantom_2d_loading):
    p = phantom_2d_loading
    ds, ids, lm, patch, table = p.ds, p.ids, p.lm, p.patch, p.table
    assert (table.k > 0).all() and (table.num_slices > table.k).all()  # phantom: negatives at both ends

    ratios = [1.0, 0.5, 0.0]
    n_main, bs = 4, 4
    # neutral budget: each epoch pays for the previous epoch's 2 mini iterations
    sched = BatchSchedule(0, 3, n_main, hess_rounds=[True, True, True], plan_capacity=64, neutral_budget=True)
    dl = nnUNetDataLoaderPNSSHESS(ds, bs, patch, patch, lm, table, ratios, "slice", 0.5, sched,
                                  oversample_foreground_percent=0.33)
    stream = OrderedBatchStream(NonDetMultiThreadedAugmenter(dl, None, 2, num_cached=4, seeds=None), sched)
    main_pid = os.getpid()
    try:
        # the 'hard' units are the first slice of every case: negatives that PNSS drops at r < 1, so they can only
        # show up in a mini batch if the workers received the plan
        far_negatives = np.array([table.unit(c, 0) for c in range(len(ids))])
        n_far = 0
        for epoch in range(3):
            selected = table.selected_mask(ratios[epoch])
            for it in range(n_main - (2 if epoch else 0)):
                batch = next(stream)
                assert (batch["epoch"], batch["phase"]) == (epoch, "main")
                assert batch["data"].shape[0] == bs
                if epoch == 0:
                    assert selected[batch["units"]].all()  # r = 1: nothing dropped, no far negative
                n_far += int((~selected[batch["units"]]).sum())
            plan = far_negatives[np.random.default_rng(epoch).permutation(len(ids))][:8].reshape(2, bs)
            sched.publish_mini_epoch(epoch, plan)
            for it in range(2):
                batch = next(stream)
                assert (batch["epoch"], batch["phase"]) == (epoch, "mini")
                assert batch["units"].tolist() == plan[it].tolist()
                # these slices carry no foreground: the targets confirm the workers cropped exactly them
                assert int(batch["target"].max()) == 0
        # epochs 1 and 2: 2 x 4 main samples each, half of them far negatives on average
        assert 2 <= n_far <= 14, n_far
        assert sched._counter.value >= 3 * n_main + 2
        workers = stream.augmenter._processes  # the batches above really came from 2 live worker processes
        assert len(workers) == 2 and all(w.is_alive() and w.pid != main_pid for w in workers)
    finally:
        stream._finish()
