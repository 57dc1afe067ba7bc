"""Figures: spectrograms in/out, latent activations over time, dictionary atoms, Hoyer histograms.

All figures are written atomically and use the non-interactive Agg backend; the format follows
the file's suffix (.png, .pdf or .svg).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from sdmvae_cli.core.plotting import plt as _plt
from sdmvae_cli.core.plotting import save_figure as _save
from sdmvae_cli.evaluation.metrics import hoyer


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
    im = ax.imshow(
        _db(p).T,
        origin="lower",
        aspect="auto",
        extent=[0, p.shape[0] * hop_s, 0, rate / 2000],
        vmin=top - 80,
        vmax=top,
        cmap="magma",
    )
    bar = fig.colorbar(im, ax=ax, pad=0.02)  # the scale in dB: without it a colour says nothing
    bar.set_label("dB", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    return _save_small(fig, ax, "time (s)", "kHz", title, path)


def plot_codes(codes: np.ndarray, hop_s: float, path: Path, title: str = "", vmax: float | None = None) -> Path:
    """|code| per latent unit over time: sparse codes show as a few bright lines.

    ``vmax`` fixes the top of the colour scale, so that figures of several models compare
    (default: this figure's 99.5th percentile)."""
    plt = _plt()
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(8, 5), dpi=110, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    a = np.abs(codes)
    im = ax.imshow(
        a.T,
        origin="lower",
        aspect="auto",
        extent=[0, codes.shape[0] * hop_s, 0, codes.shape[1]],
        cmap="viridis",
        vmin=0,
        vmax=vmax if vmax is not None else (np.percentile(a, 99.5) if a.size else 1),
    )
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
    ax.hist(
        v,
        bins=np.linspace(0, 1, 51),
        density=True,
        color="#3b6ea5",
        label=f"n={v.size} frames, mean {v.mean():.3f}" if v.size else "no frames",
    )
    ax.legend(fontsize=7)
    ax.set_xlim(0, 1)
    return _save_small(fig, ax, "Hoyer sparsity per frame", "density", title, path)


def plot_hoyer_histograms(series: Sequence[tuple[str, np.ndarray]], path: Path, title: str = "") -> Path:
    """Per-frame Hoyer sparsity, one histogram per evaluated model: (legend label, frames) pairs,
    read from `sdmvae evaluate` outputs by :func:`sdmvae_cli.evaluation.results.load_hoyer`."""
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
