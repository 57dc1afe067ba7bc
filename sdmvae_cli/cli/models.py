"""`sdmvae models` (the registered architectures, or with --released the shipped checkpoints)
and `sdmvae export`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich import box
from rich.markup import escape
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from sdmvae_cli.cli.common import MODEL_HELP, OVERWRITE_HELP, emit, emit_json, err, term
from sdmvae_cli.core.errors import UsageError


def _show(v) -> str:
    return ",".join(map(str, v)) if isinstance(v, list) else str(v)


def models(
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
    released: bool = typer.Option(
        False,
        "--released",
        "-r",
        help="List the released checkpoints (usable by name: --model vae-m64), one line each: arch, m, the paper's scores.",
    ),
    long: bool = typer.Option(
        False, "--long", "-l", help="With --released: each model's description, training data and every score."
    ),
) -> None:
    """List the registered architectures (for `train --arch`) and their options, or the released models."""
    if long and not released:
        raise UsageError("--long lists the released models in full; use it with --released")
    if released:
        _released(as_json, long)
        return
    from sdmvae_cli.core.flags import flag_with_value
    from sdmvae_cli.nets import REGISTRY, ModelConfig

    defaults = ModelConfig().to_dict()
    rows = [
        {"name": n, "description": c.DESCRIPTION, "options": {o: defaults[o] for o in c.OPTIONS}}
        for n, c in sorted(REGISTRY.items())
    ]
    if as_json:
        emit_json(rows)
        return
    t = Table(title="sdmvae architectures (train --arch NAME; released checkpoints: sdmvae models --released)")
    t.add_column("arch")
    t.add_column("description")
    t.add_column("options (default)")
    for r in rows:
        t.add_row(r["name"], r["description"], ", ".join(flag_with_value(k, _show(v)) for k, v in r["options"].items()))
    term.print(t)


#: the narrowest terminal the one-line-per-model table fits (its rows are 69 characters)
COMPACT_WIDTH = 72


def _released(as_json: bool, long: bool) -> None:
    """One line per model by default (it wrapped to ~240 lines at 80 columns with the
    descriptions in a table column); the descriptions and every score with --long or --json."""
    from sdmvae_cli.evaluation.metrics import METRIC, PAPER_KEYS
    from sdmvae_cli.nets.catalog import released_models

    rows = released_models()
    if as_json:
        emit_json(rows)
        return
    if long or term.width < COMPACT_WIDTH:  # narrower, the table would cut the names users type
        _released_long(rows)
        return
    t = Table(title="released models (--model NAME; * default, e enhance's default)", box=box.SIMPLE_HEAD, pad_edge=False)
    t.add_column("name", no_wrap=True)
    t.add_column("arch", no_wrap=True)
    t.add_column("m", justify="right", no_wrap=True)
    for k in PAPER_KEYS:  # the paper's scores in the compact list, every one with --long
        t.add_column(METRIC[k].short, justify="right", no_wrap=True)  # the qualifier: in the note below
    for r in rows:
        t.add_row(
            r["name"] + (" *" if r["default"] else "") + (" e" if r["enhance_default"] else ""),
            r["arch"] or "?",
            str(r["latent"] or "?"),
            *[_score(r, k) for k in PAPER_KEYS],
        )
    term.print(t)
    term.print(
        f"scores: 150 held-out test utterances of 10 speakers, comparable with the paper: "
        f"{', '.join(METRIC[k].label for k in PAPER_KEYS)}. Descriptions, training data and all scores: "
        "--long or --json",
        highlight=False,
    )


def _score(row: dict, key: str) -> str:
    from sdmvae_cli.evaluation.metrics import METRIC

    v = row["scores"].get(key)
    return "-" if v is None else f"{v:.{METRIC[key].digits}f}"


def _released_long(rows: list[dict]) -> None:
    """Per model: name, arch and m, its description, every score (paper's first)."""
    from sdmvae_cli.evaluation.metrics import METRICS

    for r in rows:
        term.print(
            f"[bold]{escape(r['name'])}[/bold]{' (default)' if r['default'] else ''}{' (enhance default)' if r['enhance_default'] else ''}: arch {r['arch'] or '?'}, m={r['latent'] or '?'}",
            highlight=False,
        )
        scores = [f"{m.label} {_score(r, m.key)}" for m in METRICS if m.key in r["scores"]]
        for text in (r["description"], "; ".join(scores) or "no scores"):
            if text:
                term.print(Padding(Text(text), (0, 0, 0, 2), expand=False))  # wrapped lines keep the indent
    if rows and rows[0]["data"]:
        term.print(f"training data: {escape(rows[0]['data'])}", highlight=False)


def export(
    checkpoints: List[str] = typer.Argument(
        ...,
        help=MODEL_HELP.replace("; default: the released default", "")
        + " Several: the one of lowest validation loss is released (seeds of one configuration).",
    ),
    dst: Path = typer.Argument(..., help="Release file to write."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    at_hoyer: Optional[str] = typer.Option(
        None,
        "--at-hoyer",
        help="Choose at a sparsity: the lowest validation loss among candidates whose validation Hoyer is at least "
        "this number, or this model's own (e.g. sdm-identity-m64). For a setting that trades quality for sparsity "
        "(a threshold), where the loss alone always picks the least sparse.",
    ),
    data: Optional[Path] = typer.Option(
        None, "--data", help="--at-hoyer: the prepared data (default: the one the checkpoints record)."
    ),
) -> None:
    """Write a small release copy of a checkpoint (no optimizer/RNG state): loadable, not resumable.
    Given several (e.g. the seeds of one configuration), release the best by validation loss."""
    from sdmvae_cli.evaluation.sparsity_choice import best_at_sparsity, candidates_data, target_hoyer
    from sdmvae_cli.nets.checkpoint import checkpoint_file
    from sdmvae_cli.training.selection import best_by_validation, check_export_destination, export_checkpoint

    if data is not None and at_hoyer is None:
        raise UsageError("--data goes with --at-hoyer")
    # every file read is an input: the candidates and their run folders, and with --at-hoyer the
    # target model and the prepared data (a forgotten DST must not turn the last candidate into one)
    files = [checkpoint_file(c) for c in checkpoints]
    inputs = [*files, *(f.parent for f in files if (f.parent / "config.json").is_file())]
    if at_hoyer is not None:  # the destination checked before the validation passes
        prepared = data or candidates_data(checkpoints)
        here = prepared if prepared and (prepared / "prepare.json").is_file() else None
        inputs += [*([here] if here else []), *([Path(at_hoyer)] if at_hoyer.strip() and Path(at_hoyer).exists() else [])]
        check_export_destination(dst, inputs, overwrite)
        # a target model is measured on the candidates' validation split: one of other data is refused
        choice = best_at_sparsity(checkpoints, *target_hoyer(at_hoyer, here), prepared_dir=data)
    else:
        choice = best_by_validation(checkpoints) if len(checkpoints) > 1 else None
    src = choice.best if choice else checkpoints[0]
    export_checkpoint(src, dst, overwrite=overwrite, choice=choice, inputs=inputs)
    if choice:
        for path, val in choice.losses.items():
            hoyer = "" if choice.sparsity is None else f", validation Hoyer {choice.sparsity[path]:.3f}"
            err.print(f"{'*' if path == str(choice.best) else ' '} {escape(path)}: {val:.4f}{hoyer}", highlight=False)
        err.print(f"chosen by the {choice.criterion}", highlight=False)
    err.print(f"wrote {escape(str(dst))} from {escape(str(src))} ({dst.stat().st_size / 1e6:.2f} MB)")
    emit(dst)
