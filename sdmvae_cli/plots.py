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
    fig, ax = plt.subplots(figsize=(4.2, 2.2), dpi=80)
    top = _db(p).max() if top_db is None else top_db
    ax.imshow(_db(p).T, origin="lower", aspect="auto", extent=[0, p.shape[0] * hop_s, 0, rate / 2000], vmin=top - 80, vmax=top, cmap="magma")
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


def plot_loss(history: list[dict], path: Path, title: str = "") -> Path:
    """Training curves: total loss (train, validation, best epoch), then the Itakura-Saito
    reconstruction and KL terms apart (their scales differ by orders of magnitude). Epochs are
    numbered from 0, as everywhere; the ticks are integers."""
    from matplotlib.ticker import MaxNLocator

    plt = _plt()
    ep = [h["epoch"] for h in history]
    fig, axes = plt.subplots(3, 1, figsize=(6.5, 7), dpi=110, sharex=True)
    ax = axes[0]
    ax.plot(ep, [h["train_total"] for h in history], label="train")
    ax.plot(ep, [h["val_total"] for h in history], label="validation")
    best = min(history, key=lambda h: h["val_total"])
    for a in axes:
        a.axvline(best["epoch"], color="grey", ls=":", label=f"best (epoch {best['epoch']})" if a is ax else None)
    ax.set_ylabel("total (IS + KL)")
    ax.legend(fontsize=8)
    for a, key, name in ((axes[1], "recon", "IS (reconstruction)"), (axes[2], "kl", "KL")):
        if all(f"train_{key}" in h for h in history):
            a.plot(ep, [h[f"train_{key}"] for h in history], label="train")
            a.plot(ep, [h[f"val_{key}"] for h in history], label="validation")
            a.legend(fontsize=8)
        a.set_ylabel(name)
    axes[-1].set_xlabel("epoch (from 0)")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"{title + ': ' if title else ''}loss per frame", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
