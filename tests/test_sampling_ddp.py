"""DDP synchronisation of PNSS/HESS state, on CPU with torch.distributed (gloo, 2 processes)."""
import json
import os
import socket

import numpy as np
import torch.distributed as dist
import torch.multiprocessing as mp

from nnunetv2_ext.sampling.distributed import gather_batch_sizes, gather_scores
from nnunetv2_ext.sampling.epoch_plan import build_epoch_plan
from nnunetv2_ext.sampling.hess import HardnessTable, mini_epoch_plan, rank_slice, select_hard
from nnunetv2_ext.sampling.parameters import SamplingParameters
from nnunetv2_ext.sampling.slice_table import SliceTable


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _r_schedule(samples_per_epoch):
    """r per epoch of 8 epochs over 40 slices (25 + 15) with alpha 0.5, beta 1."""
    slices = SliceTable(["a", "b"], [25, 15], [10, 3], [5, 4])
    return build_epoch_plan(SamplingParameters(alpha=0.5, beta=1), 8, samples_per_epoch,
                            lambda x: int(slices.selected_mask(x).sum())).r.tolist()


def _rank_main(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        rng = np.random.default_rng(rank)  # each rank scored different units with different values
        units = rng.choice(40, 15, replace=False)
        dsc = rng.uniform(0.3, 1, 15).astype(np.float32)  # mean ~0.65: some hard units
        table = HardnessTable(40)
        all_units, all_dsc = gather_scores(units, dsc)
        table.update(all_units, all_dsc, epoch=3)
        hard = select_hard(table, np.ones(40, bool), 0.5)
        sizes = gather_batch_sizes(3 if rank == 0 else 2)  # nnU-Net may give ranks different batch sizes
        plan = mini_epoch_plan(hard.hard_units, 3, 12345, sum(sizes), max_iterations=10)
        # the paper's epochs depend on the *global* batch: every rank derives the same r per epoch from it
        r = _r_schedule(10 * sum(sizes))
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump({"own_units": units.tolist(), "dsc": np.nan_to_num(table.dsc, nan=-1).tolist(),
                       "hard": hard.hard_units.tolist(), "plan": plan.tolist(), "sizes": sizes,
                       "my_columns": plan[:, rank_slice(sizes, rank)].tolist(), "r": r}, f)
    finally:
        dist.destroy_process_group()


def test_two_ranks_share_hardness_hard_set_and_plan(tmp_path):
    mp.spawn(_rank_main, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.load(open(tmp_path / f"rank{i}.json")) for i in range(2))
    assert set(r0["own_units"]) != set(r1["own_units"])  # ranks really saw different data
    assert r0["dsc"] == r1["dsc"]  # ... yet hold the same table
    seen = set(r0["own_units"]) | set(r1["own_units"])
    assert {i for i, d in enumerate(r0["dsc"]) if d >= 0} == seen  # with every rank's scores in it
    assert r0["hard"] == r1["hard"] and len(r0["hard"]) > 0
    assert r0["plan"] == r1["plan"]
    # global batch 5 x 10 iterations = 50 samples per epoch: 1.25 passes over the 40 slices at r = 1, then 2 over 25
    assert r0["r"] == r1["r"] == [1, 0.5, 0, 0, 0, 0, 0, 0]
    # not a constant: a rank's own batch alone gives another schedule (the sizes must really be exchanged)
    assert _r_schedule(10 * 3) != r0["r"] and _r_schedule(10 * 2) != r0["r"]
    assert r0["sizes"] == r1["sizes"] == [3, 2]
    # per iteration the two ranks' columns are disjoint and together make the global batch
    for it, row in enumerate(r0["plan"]):
        assert r0["my_columns"][it] + r1["my_columns"][it] == row
    assert set(np.ravel(r0["plan"])) == set(r0["hard"])  # every hard unit replayed once (under the cap)
