"""Iterative test of the coarse-to-fine scheme: Algorithm 1 of Liu, Duan, Zeng (2021), the testing procedure of
RSTN (Yu et al., CVPR 2018; ``coarse2fine_testing.py`` of its reference code).

Trainer-free and network-free: :func:`iterate_fine_stage` runs the loop for one network input with any ``refine``
callable, :class:`IterationLog` collects the records per case and summarises them like the paper's Table 4.

Algorithm 1 (one input, binary organ):

    M_0 = [P_coarse >= 0.5], P_0 = P_coarse                      (round 0: the coarse stage)
    for t = 1 .. T_max:
        if M_{t-1} is empty: stop                                 (no box to crop; RSTN skips such slices)
        P_t = fine(box(M_{t-1}) + K, F_S(P_{t-1}))                 (Eq. 9; see coarse_to_fine.py)
        M_t = [P_t >= 0.5]
        RDSC_t = 2 |M_t ∩ M_{t-1}| / (|M_t| + |M_{t-1}|)           (= 1 when both masks are empty, as RSTN)
        if RDSC_t >= tol: stop (converged)
    return P_t of the last round

``tol`` (paper: 0.99) and ``T_max`` (paper: 10) are :class:`StoppingRule`. Counting: ``iterations`` = fine rounds run
(0 when the coarse stage found nothing); ``converged`` = the last round reached ``tol``. An empty mask is a fixed point
of the loop (no box, so the next round would change nothing: RDSC 1, as RSTN, which skips rounds without a mask):
an input whose coarse mask is empty counts as converged with 0 rounds, one whose fine mask turns empty at round t
stops there, converged (``stopped_empty`` records it; the fine stage removed the coarse stage's false positive).

Case aggregation (:meth:`IterationLog.case_summary`): a case is all inputs between two :meth:`IterationLog.start_case`
calls (in 2d: its slices, times the test-time mirroring passes). Its ``iterations`` is the largest number of rounds
any input needed, ``converged`` whether all inputs converged, and its RDSC curve is the RDSC of the whole case,
``2 Σ|M_t ∩ M_{t-1}| / Σ(|M_t| + |M_{t-1}|)`` over its inputs, where an input that already stopped keeps its mask
(contributes RDSC 1). Table 4 summary (:meth:`IterationLog.summary`): mean iterations over cases and the fraction of
converged cases.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

import torch

PAPER_TOL = 0.99
PAPER_MAX_ITERATIONS = 10


def relative_dice(mask: torch.Tensor, previous: torch.Tensor) -> Tuple[float, int, int, int]:
    """RDSC between two binary masks of one input (any shape): (rdsc, |M ∩ M'|, |M|, |M'|); 1.0 when both are empty."""
    if mask.shape != previous.shape:
        raise ValueError(f"masks must have the same shape, got {tuple(mask.shape)} and {tuple(previous.shape)}")
    a, b = mask.bool(), previous.bool()
    inter, size_a, size_b = int((a & b).sum()), int(a.sum()), int(b.sum())
    return _rdsc(inter, size_a, size_b), inter, size_a, size_b


def _rdsc(inter: int, size_a: int, size_b: int) -> float:
    return 1.0 if size_a + size_b == 0 else 2.0 * inter / (size_a + size_b)


@dataclass(frozen=True)
class StoppingRule:
    """Stop after round t when RDSC_t >= ``tol`` or t == ``max_iterations`` (T_max). Paper: tol 0.99, T_max 10."""
    tol: float = PAPER_TOL
    max_iterations: int = PAPER_MAX_ITERATIONS

    def __post_init__(self):
        if isinstance(self.tol, bool) or not isinstance(self.tol, (int, float)) or not math.isfinite(self.tol) \
                or not 0 < self.tol <= 1:
            raise ValueError(f"iterative test: tol must lie in (0, 1], got {self.tol!r}")
        if isinstance(self.max_iterations, bool) or not isinstance(self.max_iterations, int) \
                or self.max_iterations < 1:
            raise ValueError(f"iterative test: T_max (max_iterations) must be an integer >= 1, got "
                             f"{self.max_iterations!r}")

    def converged(self, rdsc: float) -> bool:
        return rdsc >= self.tol


@dataclass
class IterationRecord:
    """The iterative test of one network input. ``overlaps[t-1]`` = (|M_t ∩ M_{t-1}|, |M_t|, |M_{t-1}|)."""
    iterations: int = 0
    rdsc: List[float] = field(default_factory=list)
    overlaps: List[Tuple[int, int, int]] = field(default_factory=list)
    converged: bool = True
    stopped_empty: bool = False
    coarse_empty: bool = False


Refine = Callable[[torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def iterate_fine_stage(probability: torch.Tensor, mask: torch.Tensor, output: torch.Tensor, refine: Refine,
                       rule: StoppingRule) -> Tuple[torch.Tensor, IterationRecord]:
    """Algorithm 1 for one input.

    Args:
        probability, mask: the coarse stage's organ probability and mask (M_0 = [P_0 >= 0.5]), any shape.
        output: what to return if no fine round runs (the coarse stage's output).
        refine: ``refine(P_{t-1}, M_{t-1}) -> (output_t, P_t, M_t)``: one fine round.
        rule: tol and T_max.
    Returns:
        (output of the last round, record).
    """
    record = IterationRecord()
    if not bool(mask.any()):
        record.coarse_empty = True
        return output, record
    for t in range(1, rule.max_iterations + 1):
        output, new_probability, new_mask = refine(probability, mask)
        rdsc, inter, size_new, size_old = relative_dice(new_mask, mask)
        record.iterations = t
        record.rdsc.append(rdsc)
        record.overlaps.append((inter, size_new, size_old))
        probability, mask = new_probability, new_mask
        record.converged = rule.converged(rdsc)
        if record.converged:
            break
        if not bool(mask.any()):  # fixed point: no box, the next round would return the same empty mask
            record.stopped_empty = record.converged = True
            break
    return output, record


def case_rdsc_curve(records: Sequence[IterationRecord]) -> List[float]:
    """RDSC of the whole case per round t = 1..max iterations (inputs that stopped keep their mask)."""
    rounds = max((r.iterations for r in records), default=0)
    curve = []
    for t in range(rounds):
        inter = size_new = size_old = 0
        for r in records:
            if r.coarse_empty:
                continue
            if t < r.iterations:
                i, a, b = r.overlaps[t]
            else:  # stopped: M_t = M_{t-1} = its last mask
                a = r.overlaps[-1][1]
                i, b = a, a
            inter, size_new, size_old = inter + i, size_new + a, size_old + b
        curve.append(_rdsc(inter, size_new, size_old))
    return curve


class IterationLog:
    """Records of the iterative test grouped into cases; see the module docstring for the aggregation."""

    def __init__(self, rule: StoppingRule):
        self.rule = rule
        self.cases: List[List[IterationRecord]] = []
        self.names: List[Optional[str]] = []
        self._open = False
        self._next_name: Optional[str] = None

    def start_case(self, name: Optional[str] = None) -> None:
        """The next records belong to a new case, named ``name`` (a case without records is dropped)."""
        self._open = False
        self._next_name = name

    def add(self, record: IterationRecord) -> None:
        if not self._open:
            self.cases.append([])
            self.names.append(self._next_name)
            self._open = True
        self.cases[-1].append(record)

    def reset(self) -> None:
        self.cases, self.names, self._open, self._next_name = [], [], False, None

    def last_case_summary(self) -> Optional[dict]:
        """:meth:`case_summary` of the last case (None before any record)."""
        if not self.cases:
            return None
        return self.case_summary(self.cases[-1], self.names[-1] or f"#{len(self.cases)}")

    def case_summary(self, records: Sequence[IterationRecord], name: str) -> dict:
        refined = [r for r in records if not r.coarse_empty]
        return {
            "case": name,
            "inputs": len(records),
            "inputs_refined": len(refined),
            "iterations": max((r.iterations for r in refined), default=0),
            "mean_iterations": (sum(r.iterations for r in refined) / len(refined)) if refined else 0.0,
            "converged": all(r.converged for r in records),
            "converged_inputs": (sum(r.converged for r in refined) / len(refined)) if refined else 1.0,
            "stopped_empty_inputs": sum(r.stopped_empty for r in refined),
            "rdsc": [round(v, 6) for v in case_rdsc_curve(records)],
        }

    def case_summaries(self, names: Optional[Sequence[str]] = None) -> List[dict]:
        if names is not None and len(names) != len(self.cases):
            raise ValueError(f"{len(names)} case names for {len(self.cases)} recorded cases")
        if names is None:
            names = [n if n is not None else f"#{i + 1}" for i, n in enumerate(self.names)]
        return [self.case_summary(records, n) for records, n in zip(self.cases, names)]

    def summary(self, names: Optional[Sequence[str]] = None) -> dict:
        """Table 4 of the paper: per case, and mean iterations / converged fraction over cases."""
        return summarise_cases(self.case_summaries(names), self.rule)

    def format(self, names: Optional[Sequence[str]] = None) -> str:
        """Human-readable per-case lines and the summary line."""
        return format_summary(self.summary(names))

    def write_json(self, path: str, names: Optional[Sequence[str]] = None) -> dict:
        """Writes :meth:`summary` to ``path`` (atomically: a temporary file renamed into place); returns it."""
        s = self.summary(names)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(s, f, indent=1)
        os.replace(tmp, path)
        return s


def summarise_cases(cases: Sequence[dict], rule: StoppingRule) -> dict:
    """Table 4 of the paper from per-case summaries (:meth:`IterationLog.case_summary`, or the records of
    ``coarse_to_fine_iterations.jsonl`` that ``nnUNetv2_predict`` writes): mean iterations, converged fraction, mean
    RDSC per round (a case that stopped counts as 1 in later rounds)."""
    cases = list(cases)
    n = len(cases)
    longest = max((len(c["rdsc"]) for c in cases), default=0)
    mean_rdsc = []
    for t in range(longest):
        values = [c["rdsc"][t] if t < len(c["rdsc"]) else 1.0 for c in cases if c["rdsc"]]
        mean_rdsc.append(round(sum(values) / len(values), 6))
    return {
        "tol": rule.tol,
        "max_iterations": rule.max_iterations,
        "cases": n,
        "mean_iterations": (sum(c["iterations"] for c in cases) / n) if n else 0.0,
        "converged_fraction": (sum(c["converged"] for c in cases) / n) if n else 0.0,
        "mean_rdsc_by_iteration": mean_rdsc,
        "per_case": cases,
    }


def format_case(c: dict) -> str:
    """One line for a case summary."""
    curve = " ".join(f"{v:.4f}" for v in c["rdsc"]) or "-"
    return (f"case {c['case']}: iterations {c['iterations']} (mean {c['mean_iterations']:.2f} over "
            f"{c['inputs_refined']}/{c['inputs']} refined inputs), converged {'yes' if c['converged'] else 'no'}, "
            f"RDSC per iteration {curve}")


def format_summary(s: dict) -> str:
    """Human-readable per-case lines and the summary line of :func:`summarise_cases`."""
    lines = [f"Coarse-to-fine iterative test (Algorithm 1, tol {s['tol']:g}, T_max {s['max_iterations']}):"]
    lines += [f"  {format_case(c)}" for c in s["per_case"]]
    lines.append(f"  summary: {s['cases']} cases, mean iterations {s['mean_iterations']:.2f}, converged "
                 f"{100 * s['converged_fraction']:.1f} %")
    return "\n".join(lines)
