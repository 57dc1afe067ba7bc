"""Training curves: loss.png of a run, one panel per loss term, the kept epoch marked."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sdmvae_cli.core.plotting import plt as _plt
from sdmvae_cli.core.plotting import save_figure as _save

LOSS_PREFIXES = ("train_", "val_")  # history columns that hold a loss (train_total, val_kl, val_median, ...)
#: loss terms by the column's last word, one panel each, in this order; a qualifier between the
#: split and the term (val_pm_total: at the posterior mean) is another curve of the term's panel
LOSS_TERMS = {"total": "total (IS + KL)", "recon": "IS (reconstruction)", "kl": "KL"}
#: statistics of the total loss with a name of their own (val_median: median per-frame total)
OF_TOTAL = ("median",)
QUALIFIERS = {"pm": "at posterior mean"}  # how a legend spells a column's qualifier


def loss_column(col: str) -> tuple[str, str, str]:
    """(split, qualifier, term) of a loss column: val_total -> (validation, '', total),
    val_pm_kl -> (validation, pm, kl), val_median -> (validation, median, total)."""
    split, rest = col.split("_", 1)
    qual, _, term = rest.rpartition("_")
    if term not in LOSS_TERMS:
        qual, term = rest, rest
    if term in OF_TOTAL:
        term = "total"
    return ("train" if split == "train" else "validation"), qual, term


def loss_panels(history: list[dict]) -> list[tuple[str, list[str]]]:
    """(panel title, columns) for every loss column in a history (train_* and val_*, with at
    least one finite value): the known terms first, any other term in a panel of its own, so no
    loss column goes unplotted."""
    cols = dict.fromkeys(k for h in history for k, v in h.items() if k.startswith(LOSS_PREFIXES) and _finite(v))
    terms: dict[str, list[str]] = {}
    for c in cols:
        terms.setdefault(loss_column(c)[2], []).append(c)
    known = [(LOSS_TERMS[t], terms[t]) for t in LOSS_TERMS if t in terms]
    return known + [(t, cs) for t, cs in terms.items() if t not in LOSS_TERMS]


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and bool(np.isfinite(v))


def _loss_label(col: str) -> str:
    who, qual, term = loss_column(col)
    if qual == term:  # a term of its own panel
        return who
    return f"{who} {QUALIFIERS.get(qual, qual.replace('_', ' '))}" if qual else who


def _best_epoch(history: list[dict]) -> int | None:
    """The epoch the run kept: the last one marked best (the run's own stopping statistic, mean
    or median), else the lowest mean validation loss (histories without the mark)."""
    marked = [h["epoch"] for h in history if h.get("best") is True]
    if marked:
        return marked[-1]
    vals = [h for h in history if isinstance(h.get("val_total"), (int, float))]
    return min(vals, key=lambda h: h["val_total"])["epoch"] if vals else None


def plot_history(run_dir: str | Path, history: list[dict]) -> Path | None:
    """A run's loss.png (see :func:`plot_loss`), titled with its folder; None for no epoch."""
    if not history:
        return None
    return plot_loss(history, Path(run_dir) / "loss.png", title=Path(run_dir).resolve().name)


def plot_loss(history: list[dict], path: Path, title: str = "") -> Path | None:
    """Training curves, one panel per loss term (see :func:`loss_panels`): total (train,
    validation and its median), then the Itakura-Saito reconstruction and KL terms apart (their
    scales differ by orders of magnitude); the best epoch marked. An epoch that lacks a column (a
    resumed older run, NaN where a statistic did not exist yet) is skipped in that curve. Epochs are numbered from 0, as everywhere; the
    ticks are integers. None (nothing written) for a history with no loss column."""
    from matplotlib.ticker import MaxNLocator

    panels = loss_panels(history)
    if not panels:
        return None
    plt = _plt()
    fig, axes = plt.subplots(len(panels), 1, figsize=(6.5, 1.2 + 1.9 * len(panels)), dpi=110, sharex=True, squeeze=False)
    best = _best_epoch(history)
    for i, (ax, (name, cols)) in enumerate(zip(axes[:, 0], panels)):
        for c in cols:
            pts = [(h["epoch"], h[c]) for h in history if _finite(h.get(c))]
            ax.plot([e for e, _ in pts], [v for _, v in pts], label=_loss_label(c), ls="--" if loss_column(c)[1] else "-")
        if best is not None:
            ax.axvline(best, color="grey", ls=":", label=f"best (epoch {best})" if i == 0 else None)
        ax.set_ylabel(name)
        ax.legend(fontsize=8)
    axes[-1, 0].set_xlabel("epoch (from 0)")
    axes[-1, 0].xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"{title + ': ' if title else ''}loss per frame", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
