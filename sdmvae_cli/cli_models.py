"""`sdmvae models` (the registered architectures, or with --released the shipped checkpoints)
and `sdmvae export`."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer
from rich.markup import escape
from rich.table import Table

from sdmvae_cli.cli_common import MODEL_HELP, OVERWRITE_HELP, emit, emit_json, err, term

FLAG = {"dictionary": "dict"}  # ModelConfig field -> CLI flag, where they differ
SCORE_COLUMNS = (("pesq_nb", "PESQ P.862 raw (paper)", "{:.2f}"), ("estoi", "ESTOI (paper's STOI)", "{:.3f}"),
                 ("hoyer", "Hoyer (paper protocol)", "{:.3f}"), ("pesq_wb", "PESQ-WB", "{:.2f}"), ("stoi", "STOI", "{:.3f}"),
                 ("si_sdr", "SI-SDR dB", "{:.1f}"))


def _show(v) -> str:
    return ",".join(map(str, v)) if isinstance(v, list) else str(v)


def models(
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
    released: bool = typer.Option(False, "--released", "-r", help="List the released checkpoints (usable by name: --model vae-m64) with their data and scores."),
) -> None:
    """List the registered architectures (for `train --arch`) and their options, or the released models."""
    if released:
        _released(as_json)
        return
    from sdmvae_cli.nets import REGISTRY, ModelConfig

    defaults = ModelConfig().to_dict()
    rows = [{"name": n, "description": c.DESCRIPTION, "options": {o: defaults[o] for o in c.OPTIONS}} for n, c in sorted(REGISTRY.items())]
    if as_json:
        emit_json(rows)
        return
    t = Table(title="sdmvae architectures (train --arch NAME; released checkpoints: sdmvae models --released)")
    t.add_column("arch")
    t.add_column("description")
    t.add_column("options (default)")
    for r in rows:
        t.add_row(r["name"], r["description"], ", ".join(f"--{FLAG.get(k, k).replace('_', '-')} {_show(v)}" for k, v in r["options"].items()))
    term.print(t)


def _released(as_json: bool) -> None:
    from sdmvae_cli.released import released_models

    rows = released_models()
    if as_json:
        emit_json(rows)
        return
    t = Table(title="released models (--model NAME); scores: 150 held-out test utterances, 10 speakers")
    t.add_column("name (* default)", no_wrap=True)
    t.add_column("model")
    for _, head, _ in SCORE_COLUMNS:
        t.add_column(head, justify="right")
    for r in rows:
        cells = [fmt.format(r["scores"][k]) if k in r["scores"] else "-" for k, _, fmt in SCORE_COLUMNS]
        t.add_row(r["name"] + (" *" if r["default"] else ""), r["description"], *cells)
    term.print(t)
    if rows and rows[0]["data"]:
        term.print(f"training data: {escape(rows[0]['data'])}", highlight=False)


def export(
    checkpoints: List[Path] = typer.Argument(..., help=MODEL_HELP.replace("; default: the released default", "")
                                             + " Several: the one of lowest validation loss is released (seeds of one configuration)."),
    dst: Path = typer.Argument(..., help="Release file to write."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Write a small release copy of a checkpoint (no optimizer/RNG state): loadable, not resumable.
    Given several (e.g. the seeds of one configuration), release the best by validation loss."""
    from sdmvae_cli.checkpoint import best_by_validation, export_checkpoint

    choice = best_by_validation(checkpoints) if len(checkpoints) > 1 else None
    # every candidate is an input: a forgotten DST must not turn the last candidate into one
    inputs = [Path(p) for p in choice.losses] if choice else None
    src = choice.best if choice else checkpoints[0]
    export_checkpoint(src, dst, overwrite=overwrite, choice=choice, inputs=inputs)
    if choice:
        for path, val in choice.losses.items():
            err.print(f"{'*' if path == str(choice.best) else ' '} {escape(path)}: {val:.4f}", highlight=False)
        err.print(f"chosen by the {choice.criterion}", highlight=False)
    err.print(f"wrote {escape(str(dst))} from {escape(str(src))} ({dst.stat().st_size / 1e6:.2f} MB)")
    emit(dst)
