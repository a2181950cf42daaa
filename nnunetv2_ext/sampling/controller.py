"""The trainer-free PNSS/HESS state of one training run: what the nnU-Net mixin asks at every hook.

:class:`SamplingController` owns the slice table, the epoch plan (r and HESS rounds per nnU-Net epoch), the hardness
tables, the per-epoch records and their checkpoint state. It never touches a network or a data loader: the trainer
hands it the scores (from the training forward pass and/or the exact scoring pass) and gets back the hard set and the
mini-epoch plan. All of it is unit-tested without nnU-Net.

Per nnU-Net epoch e the trainer does::

    main = controller.main_iterations(e)              # N, or N - mini(e - 1) with a neutral budget
    ... trains `main` batches (workers sample D^{r(e)}) ...
    rnd = controller.end_main_phase(e, forward_scores, exact_scores)   # None unless e ends with a HESS round
    ... trains len(rnd.plan) mini batches ...
    record = controller.finish_epoch(e, main, rnd, mini_loss)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

from nnunetv2_ext.sampling.epoch_plan import EpochPlan, build_epoch_plan
from nnunetv2_ext.sampling.hess import HardnessTable, HardSet, mini_epoch_plan, select_hard
from nnunetv2_ext.sampling.parameters import SamplingParameters
from nnunetv2_ext.sampling.report import epoch_record
from nnunetv2_ext.sampling.slice_table import SliceTable

Scores = Tuple[np.ndarray, np.ndarray]  # (global unit indices, DSC)


@dataclass
class HessRound:
    hard: HardSet
    plan: np.ndarray
    """(iterations, global batch size) unit indices of the mini epoch."""
    selected_dsc: np.ndarray
    agreement: Optional[dict]


def hard_set_agreement(forward: HardnessTable, exact: HardnessTable, selected: np.ndarray, forward_min_epoch: int,
                       epoch: int, outlier_threshold: float) -> dict:
    """How well forward scores (age-limited) stand in for the exact pass: Spearman rank correlation of the slice scores
    both have, and the Jaccard overlap of the hard sets each would pick (1 if both are empty)."""
    from scipy.stats import spearmanr

    have_f = selected & np.isfinite(forward.dsc) & (forward.epoch_scored >= forward_min_epoch)
    common = have_f & np.isfinite(exact.dsc) & (exact.epoch_scored >= epoch)
    a, b = forward.dsc[common], exact.dsc[common]
    rho = float(spearmanr(a, b).statistic) if common.sum() >= 3 and a.std() > 0 and b.std() > 0 else float("nan")
    hf = set(select_hard(forward, selected, outlier_threshold, forward_min_epoch).hard_units.tolist())
    he = set(select_hard(exact, selected, outlier_threshold, epoch).hard_units.tolist())
    union = hf | he
    return {"spearman": rho, "n_common": int(common.sum()), "coverage": float(common.sum() / max(selected.sum(), 1)),
            "hard_jaccard": len(hf & he) / len(union) if union else 1.0, "n_hard_forward": len(hf),
            "n_hard_exact": len(he)}


class SamplingController:
    def __init__(self, params: SamplingParameters, table: SliceTable, num_epochs: int, iterations_per_epoch: int,
                 global_batch_size: int):
        self.params = params
        self.table = table
        self.iterations_per_epoch = int(iterations_per_epoch)
        self.global_batch_size = int(global_batch_size)
        self.plan: EpochPlan = build_epoch_plan(params, num_epochs, self.iterations_per_epoch * self.global_batch_size,
                                                lambda r: int(table.selected_mask(r).sum()))
        self.max_mini_iterations = int(math.floor((params.max_epoch_cost - 1) * self.iterations_per_epoch + 1e-9)) \
            if params.hess else 0
        kinds = {params.scoring} | ({"exact", "forward"} if params.compare_scoring else set())
        self.tables: Dict[str, HardnessTable] = {k: HardnessTable(table.num_units) for k in sorted(kinds)} \
            if params.hess else {}
        self.records: List[dict] = []

    # ---- questions the hooks ask --------------------------------------------------------------------------------
    @property
    def records_forward_scores(self) -> bool:
        return "forward" in self.tables

    def needs_exact_pass(self, epoch: int) -> bool:
        return bool(self.plan.hess_round[epoch]) and "exact" in self.tables

    def exact_units(self, epoch: int) -> np.ndarray:
        """Units the exact pass scores at a HESS round: the selected ones, and with ``negatives_with_fp='hard'``
        also every negative slice PNSS has dropped (where far false positives appear)."""
        units = self.selected(epoch)
        if self.params.negatives_with_fp == "hard":
            units = units | ~self.table.positive
        return np.flatnonzero(units)

    def ratio(self, epoch: int) -> float:
        return float(self.plan.r[epoch])

    def selected(self, epoch: int) -> np.ndarray:
        return self.table.selected_mask(self.ratio(epoch))

    def mini_iterations_of(self, epoch: int) -> int:
        """Mini iterations trained after epoch ``epoch`` (0 if none or not yet trained)."""
        for rec in reversed(self.records):
            if rec["epoch"] == epoch:
                return int(rec["mini_epoch_iterations"])
        return 0

    def main_iterations(self, epoch: int) -> int:
        debt = self.mini_iterations_of(epoch - 1) if self.params.budget == "neutral" else 0
        return self.iterations_per_epoch - debt

    # ---- the end of a main phase --------------------------------------------------------------------------------
    def _forward_min_epoch(self, epoch: int) -> int:
        """Forward scores count from the epoch after the round ``score_max_age`` rounds back (0 if none)."""
        earlier = np.flatnonzero(self.plan.hess_round[:epoch])
        age = self.params.score_max_age
        return int(earlier[-age]) + 1 if len(earlier) >= age else 0

    def end_main_phase(self, epoch: int, forward: Optional[Scores] = None,
                       exact: Optional[Scores] = None) -> Optional[HessRound]:
        """Stores the epoch's scores; at a HESS round returns the hard set (Eq. 8) and the mini-epoch plan."""
        if forward is not None and "forward" in self.tables:
            self.tables["forward"].update(forward[0], forward[1], epoch)
        if not self.plan.hess_round[epoch]:
            return None
        if "exact" in self.tables:
            if exact is None:
                raise ValueError(f"HESS round at epoch {epoch} needs the exact scoring pass")
            self.tables["exact"].update(exact[0], exact[1], epoch)
        selected = self.selected(epoch)
        min_epoch = epoch if self.params.scoring == "exact" else self._forward_min_epoch(epoch)
        driver = self.tables[self.params.scoring]
        fp_negatives = ~self.table.positive if self.params.negatives_with_fp == "hard" else None
        hard = select_hard(driver, selected, self.params.outlier_threshold, min_epoch, fp_negatives)
        agreement = None
        if self.params.compare_scoring:
            agreement = hard_set_agreement(self.tables["forward"], self.tables["exact"], selected,
                                           self._forward_min_epoch(epoch), epoch, self.params.outlier_threshold)
        plan = mini_epoch_plan(hard.hard_units, epoch, self.params.seed, self.global_batch_size,
                               self.max_mini_iterations)
        valid = selected & (driver.epoch_scored >= min_epoch)
        return HessRound(hard, plan, driver.dsc[valid], agreement)

    def finish_epoch(self, epoch: int, main_iterations: int, rnd: Optional[HessRound] = None,
                     mini_epoch_loss: Optional[float] = None) -> dict:
        p = self.plan
        rec = epoch_record(epoch, p.r[epoch], p.paper_epoch[epoch], p.passes_before[epoch + 1], p.n_selected[epoch],
                           self.table.num_units, main_iterations, self.params,
                           hard=rnd.hard if rnd else None, selected_dsc=rnd.selected_dsc if rnd else None,
                           mini_iterations=len(rnd.plan) if rnd else 0, mini_epoch_loss=mini_epoch_loss,
                           agreement=rnd.agreement if rnd else None)
        self.records = [r for r in self.records if r["epoch"] < epoch] + [rec]
        return rec

    # ---- checkpoints --------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"parameters": self.params.as_dict(), "slice_table": self.table.signature(),
                "tables": {k: t.state_dict() for k, t in self.tables.items()}, "records": list(self.records)}

    def load_state_dict(self, state: dict, current_epoch: int) -> None:
        """Restores the state saved at the end of epoch ``current_epoch - 1``; raises ValueError on a mismatch."""
        saved = {**SamplingParameters().as_dict(), **state["parameters"]}  # fields added later: their defaults
        if saved != self.params.as_dict():
            raise ValueError(f"the checkpoint was trained with sampling parameters {state['parameters']}, this "
                             f"trainer has {self.params.as_dict()}")
        if state["slice_table"] != self.table.signature():
            raise ValueError("the checkpoint's training cases/slice counts differ from this fold's preprocessed data; "
                             "was the data re-preprocessed or splits_final.json changed?")
        for k, t in self.tables.items():
            t.load_state_dict(state["tables"][k])
        self.records = [r for r in state["records"] if r["epoch"] < current_epoch]
        if len(self.records) != current_epoch or [r["epoch"] for r in self.records] != list(range(current_epoch)):
            raise ValueError(f"the checkpoint's sampling records cover epochs {[r['epoch'] for r in self.records]}, "
                             f"expected 0..{current_epoch - 1}")

    def num_scored(self) -> int:
        return sum(int(np.isfinite(t.dsc).sum()) for t in self.tables.values())
