"""Replay early stopping on a run's logged validation statistics (history.csv): where each rule
(the one-sample mean, the median, the posterior-mean ELBO) would have kept its best epoch and
stopped, with the same patience, on the same run. Validation data only.

    python scripts/replay_stopping.py RUN_DIR... [--patience 20]
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

RULES = {"mean (one sample)": "val_total", "median": "val_median", "posterior-mean": "val_pm_total"}


def replay(values: list[float], patience: int) -> tuple[int, int | None]:
    """(best epoch, epoch the rule stops at, or None if still running at the last logged epoch)."""
    best, best_epoch = math.inf, 0
    for epoch, v in enumerate(values):
        if v < best:
            best, best_epoch = v, epoch
        elif epoch - best_epoch >= patience:
            return best_epoch, epoch
    return best_epoch, None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--patience", type=int, default=20)
    a = ap.parse_args()
    print("| run | epochs logged | " + " | ".join(f"{r}: best / stop" for r in RULES) + " |")
    print("|---|---:|" + "---|" * len(RULES))
    for run in a.runs:
        rows = list(csv.DictReader(open(run / "history.csv", newline="")))
        cells = []
        for col in RULES.values():
            best, stop = replay([float(r[col]) for r in rows], a.patience)
            cells.append(f"{best} / {stop if stop is not None else 'running'}")
        print(f"| {run.name} | {len(rows)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
