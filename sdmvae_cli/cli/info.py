"""`sdmvae info CKPT|NAME [--json]`: what a checkpoint holds (:mod:`sdmvae_cli.training.info`).

Its table is the result, so it goes to stdout (like ``models``); ``--json`` prints the document.
"""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from sdmvae_cli.cli.common import emit_json, term


def _show(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, list):
        return ",".join(map(str, v))
    return "-" if v is None else str(v)


def _pairs(d: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_show(v)}" for k, v in d.items())


def info_table(doc: dict[str, Any]) -> Table:
    """One row per field people look for; the nested configs as key=value lists."""
    t = Table(title=escape(doc["path"]), show_header=False)
    t.add_column("field", style="bold")
    t.add_column("value", overflow="fold")
    v = doc.get("best_validation") or {}
    d = doc["data"]
    rows = [
        ("released model", doc["released"]),
        ("format", f"{doc['format']} v{doc['format_version']} (written by sdmvae {_show(doc['package_version'])})"),
        ("model", f"{doc['family'] or doc['model'].get('model')}: {_pairs(doc['model_options'])}"),
        ("parameters", f"{doc['parameters']:,}"),
        ("STFT", _pairs(doc["stft"])),
        ("training options", _pairs(doc["train"]) or "-"),
        ("seed", doc["seed"]),
        ("engine", doc["engine"] or "not recorded"),
        ("epoch held", doc["epoch"]),
        ("epochs trained", doc["epochs_trained"]),
        ("best epoch", doc["best_epoch"]),
        (
            "best validation",
            _pairs({k: v[k] for k in ("total", "median", "posterior_mean", "stop_on", "statistic")}) if v else "-",
        ),
        ("resumable", "yes (optimizer state)" if doc["resumable"] else "no (a release copy)"),
        ("exported from", doc["exported_from"]),
        ("data fingerprint", d["fingerprint"]),
        ("prepared dir", f"{_show(d['prepared_dir'])}{'' if d['prepared_exists'] else ' (not on this machine)'}"),
    ]
    if d["prepared_exists"]:
        rows.append(("still this data", "yes" if d["matches"] else f"no: it now holds {d['prepared_fingerprint']}"))
        rows += [(f"{name} split", _pairs(sizes)) for name, sizes in d["splits"].items()]
    for name, value in rows:
        if value is not None:
            t.add_row(name, escape(_show(value)))
    return t


def info(
    checkpoint: str = typer.Argument(..., metavar="CKPT|NAME", help="Checkpoint file, run directory or released model name."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole description as JSON."),
) -> None:
    """Show what a checkpoint holds: model and STFT configs, data, training options, epochs, validation, versions."""
    from sdmvae_cli.training.info import checkpoint_info

    doc = checkpoint_info(checkpoint)
    if as_json:
        emit_json(doc)
    else:
        term.print(info_table(doc))
