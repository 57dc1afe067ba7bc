"""`sdmvae report`: parses options and calls :func:`sdmvae_cli.report.page.make_report`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List

import typer


def report(
    inputs: List[Path] = typer.Argument(
        ...,
        metavar="EVAL_DIR_OR_RUN...",
        help="Output directories of `sdmvae evaluate CKPT PREPARED_DIR`, or run directories (best.pt, eval-test/).",
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Folder to write (index.html, report.json, audio/, img/, models/); must not exist."
    ),
    utterances: int = typer.Option(
        3,
        "--utterances",
        "-n",
        min=0,
        help="Test utterances to resynthesise and show (each from another speaker where possible; fewer, said on stderr and the page, where fewer were scored by every model).",
    ),
    force: bool = typer.Option(False, help="Replace an earlier report at --out (never a folder that is not one)."),
) -> None:
    """A static listening page: results table, input vs resynthesis players and spectrograms, codes, Hoyer, losses."""
    from tqdm import tqdm

    from sdmvae_cli.report.page import make_report

    index = make_report(
        inputs,
        out,
        utterances,
        force=force,
        progress_factory=lambda n: tqdm(total=n, desc="report", unit="file", disable=None, leave=False, file=sys.stderr),
    )
    print(index)
