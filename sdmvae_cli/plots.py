"""Figures: spectrograms in/out, latent activations over time, dictionary atoms, Hoyer histograms.

All figures are written atomically and use the non-interactive Agg backend; the format follows
the file's suffix (.png, .pdf or .svg).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from sdmvae_cli.atomic import atomic_path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg"}


def figure_format(path: str | Path) -> str:
    """png, pdf or svg from the suffix; anything else is one error line."""
    from sdmvae_cli.errors import SdmvaeError

    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise SdmvaeError(f"{path}: unsupported figure format {Path(path).suffix or '(none)'!r}; use .png, .pdf or .svg")
    return fmt


def _save(fig, path: Path) -> Path:
    path = Path(path)
    fmt = figure_format(path)
    with atomic_path(path, suffix=path.suffix) as tmp:
        fig.savefig(tmp, format=fmt)
    _plt().close(fig)
    return path


def codes_vmax(codes: Sequence[np.ndarray]) -> float:
    """One colour-scale top for the codes of several models: the 99.5th percentile of |code|
    over all of them (so a bright unit means the same in every figure)."""
    a = np.concatenate([np.abs(c).ravel() for c in codes if c.size]) if codes else np.zeros(0)
    return float(np.percentile(a, 99.5)) if a.size else 1.0


def _db(p: np.ndarray) -> np.ndarray:
    return 10 * np.log10(np.maximum(p, 1e-10))


def plot_spectrograms(inp: np.ndarray, out: np.ndarray, hop_s: float, rate: int, path: Path, title: str = "") -> Path:
    """Input vs resynthesised power spectrograms (frames x bins), in dB, same colour scale."""
    plt = _plt()
    fig, axes = plt.subplots(2, 1, figsize=(8, 5.5), dpi=110, sharex=True)
    top = _db(inp).max()
    ext = [0, inp.shape[0] * hop_s, 0, rate / 2000]
    for ax, p, name in zip(axes, (inp, out), ("input", "resynthesised (posterior mean)")):
        im = ax.imshow(_db(p).T, origin="lower", aspect="auto", extent=ext, vmin=top - 80, vmax=top, cmap="magma")
        ax.set_ylabel("kHz")
        ax.set_title(name, fontsize=9)
    axes[-1].set_xlabel("time (s)")
    fig.colorbar(im, ax=axes, label="dB")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def _save_small(fig, ax, xlabel: str, ylabel: str, title: str, path: Path) -> Path:
    """The small figures of the report: one type size for labels, ticks and title."""
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_power(p: np.ndarray, hop_s: float, rate: int, path: Path, title: str, top_db: float | None = None) -> Path:
    """One small power spectrogram in dB; ``top_db`` (e.g. the input's peak) shares the colour
    scale between an input and its resynthesis plotted in separate figures."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.6, 2.2), dpi=80)
    top = _db(p).max() if top_db is None else top_db
    im = ax.imshow(_db(p).T, origin="lower", aspect="auto", extent=[0, p.shape[0] * hop_s, 0, rate / 2000], vmin=top - 80, vmax=top, cmap="magma")
    bar = fig.colorbar(im, ax=ax, pad=0.02)  # the scale in dB: without it a colour says nothing
    bar.set_label("dB", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    return _save_small(fig, ax, "time (s)", "kHz", title, path)


def plot_codes(codes: np.ndarray, hop_s: float, path: Path, title: str = "", vmax: float | None = None) -> Path:
    """|code| per latent unit over time: sparse codes show as a few bright lines.

    ``vmax`` fixes the top of the colour scale, so that figures of several models compare
    (default: this figure's 99.5th percentile)."""
    from sdmvae_cli.metrics import hoyer

    plt = _plt()
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(8, 5), dpi=110, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    a = np.abs(codes)
    im = ax.imshow(a.T, origin="lower", aspect="auto", extent=[0, codes.shape[0] * hop_s, 0, codes.shape[1]], cmap="viridis",
                   vmin=0, vmax=vmax if vmax is not None else (np.percentile(a, 99.5) if a.size else 1))
    ax.set_ylabel("latent unit (code dimension)")
    fig.colorbar(im, ax=[ax, ax2], label="|code| (posterior mean)" + (" (shared scale)" if vmax is not None else ""))
    h = hoyer(codes)
    ax2.plot(np.arange(len(h)) * hop_s, h, lw=0.8)
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("Hoyer")
    ax2.set_xlabel("time (s)")
    ax.set_title(f"{title + ': ' if title else ''}latent codes (mean Hoyer {h.mean():.2f})", fontsize=10)
    return _save(fig, path)


def plot_dictionary(d: np.ndarray, path: Path, title: str = "dictionary atoms") -> Path:
    """Atoms (columns of D, m x k) as an image, and the first few as curves."""
    plt = _plt()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9, 3.5), dpi=110)
    lim = np.abs(d).max()
    im = ax.imshow(d, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax.set_xlabel("atom index (column of D, k)")
    ax.set_ylabel("latent dimension (row of D, m)")
    fig.colorbar(im, ax=ax, label="atom value D[i, j]")
    for r in range(min(6, d.shape[1])):
        ax2.plot(d[:, r], label=f"atom {r}")
    ax2.legend(fontsize=7)
    ax2.set_xlabel("latent dimension (row of D, m)")
    ax2.set_ylabel("atom value")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_hoyer_histogram(values: np.ndarray, path: Path, title: str) -> Path:
    """Per-frame Hoyer sparsity of one model, on fixed [0, 1] bins so that models compare."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.2, 2.6), dpi=80)
    v = np.asarray(values, dtype=np.float64)
    ax.hist(v, bins=np.linspace(0, 1, 51), density=True, color="#3b6ea5", label=f"n={v.size} frames, mean {v.mean():.3f}" if v.size else "no frames")
    ax.legend(fontsize=7)
    ax.set_xlim(0, 1)
    return _save_small(fig, ax, "Hoyer sparsity per frame", "density", title, path)


def plot_hoyer_histograms(series: Sequence[tuple[str, np.ndarray]], path: Path, title: str = "") -> Path:
    """Per-frame Hoyer sparsity, one histogram per evaluated model: (legend label, frames) pairs,
    read from `sdmvae evaluate` outputs by :func:`sdmvae_cli.report.load_hoyer`."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    bins = np.linspace(0, 1, 51)
    for label, h in series:
        ax.hist(h, bins=bins, histtype="step", density=True, label=f"{label} (n={h.size} frames, mean {h.mean():.3f})")
    ax.set_xlabel("Hoyer sparsity of the interpretable code (per frame)")
    ax.set_ylabel("density")
    ax.set_title(title or "per-frame Hoyer sparsity", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


LOSS_PREFIXES = ("train_", "val_")  # history columns that hold a loss (train_total, val_kl, val_median, ...)
#: loss terms by the column's last word, one panel each, in this order; a qualifier between the
#: split and the term (val_pm_total: at the posterior mean) is another curve of the term's panel
LOSS_TERMS = {"total": "total (IS + KL)", "recon": "IS (reconstruction)", "kl": "KL"}
#: statistics of the total loss with a name of their own (val_median: median per-frame total)
OF_TOTAL = ("median",)
QUALIFIERS = {"pm": "at posterior mean"}  # how a legend spells a column's qualifier


def _loss_column(col: str) -> tuple[str, str, str]:
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
        terms.setdefault(_loss_column(c)[2], []).append(c)
    known = [(LOSS_TERMS[t], terms[t]) for t in LOSS_TERMS if t in terms]
    return known + [(t, cs) for t, cs in terms.items() if t not in LOSS_TERMS]


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and bool(np.isfinite(v))


def _loss_label(col: str) -> str:
    who, qual, term = _loss_column(col)
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
            ax.plot([e for e, _ in pts], [v for _, v in pts], label=_loss_label(c), ls="--" if _loss_column(c)[1] else "-")
        if best is not None:
            ax.axvline(best, color="grey", ls=":", label=f"best (epoch {best})" if i == 0 else None)
        ax.set_ylabel(name)
        ax.legend(fontsize=8)
    axes[-1, 0].set_xlabel("epoch (from 0)")
    axes[-1, 0].xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"{title + ': ' if title else ''}loss per frame", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
