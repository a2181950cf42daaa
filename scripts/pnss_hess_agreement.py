#!/usr/bin/env python
"""Forward scores against HESS's exact pass, per HESS round, from the ``sampling_log.json`` of trainings run with
``compare_scoring=True`` (the design set's ``AblForward``; issue 9 item 3). Part of
``bash scripts/pnss_hess_benchmark.sh WORK_ROOT design``; on its own:

    python scripts/pnss_hess_agreement.py WORK_ROOT/nnUNet_results/Dataset991_PhantomA AblForward OUT.md

Every result folder ``<trainer>_BM...s<seed>...`` (a benchmark run of the trainer, one per seed) and every fold in it
gives one row per HESS round: Spearman ρ of the slice scores both methods have, Jaccard overlap of the hard sets
they would pick, the share of D^r the forward scores cover, and the sizes of the two hard sets.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys


def agreement_rows(dataset_results: str, trainer: str):
    """(run folder, fold, epoch, agreement dict) for every HESS round with an agreement record."""
    rows = []
    pattern = re.compile(rf"^{re.escape(trainer)}(_BM\w+)?__")
    for run in sorted(os.listdir(dataset_results)):
        if not pattern.match(run):
            continue
        for log in sorted(glob.glob(os.path.join(dataset_results, run, "fold_*", "sampling_log.json"))):
            fold = os.path.basename(os.path.dirname(log))
            with open(log, encoding="utf-8") as f:
                rows += [(run.split("__")[0], fold, r["epoch"], r["agreement"]) for r in json.load(f)
                         if r.get("agreement")]
    return rows


def agreement_markdown(rows) -> str:
    out = ["| run | fold | epoch | Spearman ρ | hard-set Jaccard | coverage of D^r | hard (forward / exact) |",
           "|---|---|---|---|---|---|---|"]
    for run, fold, epoch, ag in rows:
        out.append(f"| {run} | {fold} | {epoch} | {ag['spearman']:.3f} | {ag['hard_jaccard']:.3f} | "
                   f"{100 * ag['coverage']:.0f} % | {ag['n_hard_forward']} / {ag['n_hard_exact']} |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("dataset_results", help="nnUNet_results/DatasetXXX_Name")
    p.add_argument("trainer", help="the trainer whose runs logged the agreement (e.g. AblForward)")
    p.add_argument("output", help="markdown file to write")
    a = p.parse_args(argv)
    rows = agreement_rows(a.dataset_results, a.trainer)
    if not rows:
        print(f"no HESS round with an agreement record in {a.dataset_results} for trainer {a.trainer}",
              file=sys.stderr)
        return 1
    text = (f"# Forward scores vs the exact pass, per HESS round ({a.trainer})\n\n"
            f"`python scripts/pnss_hess_agreement.py {a.dataset_results} {a.trainer} {a.output}`\n\n"
            + agreement_markdown(rows) + "\n")
    with open(a.output, "w", encoding="utf-8") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
