"""Matplotlib without a display, and figures written atomically in the format their suffix
names: shared by the training curves (loss.png) and every figure of ``plot`` and ``report``.
matplotlib is imported lazily (about 0.5 s) so that commands that draw nothing never pay it."""

from __future__ import annotations

from pathlib import Path

from sdmvae_cli.core.atomic import atomic_path
from sdmvae_cli.core.errors import SdmvaeError


def plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg"}


def figure_format(path: str | Path) -> str:
    """png, pdf or svg from the suffix; anything else is one error line."""
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise SdmvaeError(f"{path}: unsupported figure format {Path(path).suffix or '(none)'!r}; use .png, .pdf or .svg")
    return fmt


def save_figure(fig, path: Path) -> Path:
    path = Path(path)
    fmt = figure_format(path)
    with atomic_path(path, suffix=path.suffix) as tmp:
        fig.savefig(tmp, format=fmt)
    plt().close(fig)
    return path
