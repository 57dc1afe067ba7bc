"""`sdmvae demo`: parses options and calls :func:`sdmvae_cli.report.demo.run_demo`. The result table is
the product here, so it goes to stdout (or the JSON with --json)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import typer
from rich.markup import escape
from rich.table import Table

from sdmvae_cli.cli.common import MODEL_HELP, emit_json, term


def demo(
    out_dir: Path = typer.Option(Path("sdmvae-demo"), "--out", "-o", help="Where resynthesised files and plots go."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    source: Literal["speech", "espeak", "synthetic"] = typer.Option(
        "speech",
        help="speech (3 bundled LibriSpeech utterances, CC BY 4.0), espeak (espeak-ng TTS) or synthetic (a source-filter signal, not speech).",
    ),
    audio: Optional[Path] = typer.Option(None, help="Use your own audio files from this folder instead."),
    limit: int = typer.Option(5, min=1, help="With --audio: at most this many files."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Resynthesise and score real speech with no corpus at hand (seconds)."""
    from sdmvae_cli.report.demo import DEMO_METRICS, run_demo

    r = run_demo(out_dir, model, source, audio, limit)
    if as_json:
        emit_json(r)
        return
    t = Table(title=f"demo: {escape(r['source'])}\nmodel {escape(r['model'])}")
    t.add_column("file", justify="left", no_wrap=True)
    for m in DEMO_METRICS:
        t.add_column(m.label.replace(" (", "\n("), justify="right")
    for row in r["files"]:
        cells = [f"{row[m.key]:.{m.digits}f}" if m.key in row else "" for m in DEMO_METRICS]
        if "error" in row:  # no audio metric: the reason in their first column (the Hoyer of the codes stands)
            cells[0] = row["error"]
        t.add_row(Path(row["input"]).name, *cells)
    term.print(t)
    sp = r["sparsity"]
    term.print(
        f"latent Hoyer sparsity {sp['hoyer']:.3f} (per file over all frames; pooled {sp['hoyer_mean']:.3f}), "
        f"exact zeros {sp['zero_fraction']:.3f}, active units {sp['active_units']}/{sp['code_dim']}",
        highlight=False,
    )
    term.print(f"files and plots (spectrograms.png, codes.png) in {escape(str(out_dir))}", highlight=False)
