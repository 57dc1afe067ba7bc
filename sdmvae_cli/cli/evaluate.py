"""`sdmvae evaluate` and `sdmvae table`: parse options and call :mod:`sdmvae_cli.evaluation.evaluate` /
:mod:`sdmvae_cli.evaluation.table`.

evaluate's stdout: the summary.json path (or the summary with --json); its table goes to
stderr. table's stdout is the table itself (it is the result), or nothing with ``-o``.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import List, Literal, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sdmvae_cli.cli.common import MODEL_HELP, OVERWRITE_HELP, bar, device_option, emit, emit_json, err, term
from sdmvae_cli.core.atomic import write_text
from sdmvae_cli.core.device import resolve_device
from sdmvae_cli.core.errors import UsageError
from sdmvae_cli.core.outputs import check_file_destination


def summary_table(summary: dict, title: str) -> Table:
    t = Table(title=title)
    t.add_column("metric")
    t.add_column("mean", justify="right")
    t.add_column("std", justify="right")
    t.add_column("n", justify="right")
    for k, v in summary["metrics"].items():
        if v["mean"] is None:
            t.add_row(k, "-", "-", "0")
        else:
            t.add_row(k, f"{v['mean']:.3f}", f"{v['std']:.3f}", str(v["n"]))
    sp = summary.get("sparsity")
    if sp:
        t.add_row("zero fraction", f"{sp['zero_fraction']:.3f}", "", str(sp["frames"]))
        t.add_row("near-zero fraction", f"{sp['near_zero_fraction']:.3f}", "", str(sp["frames"]))
        t.add_row("active units", f"{sp['active_units']} / {sp['code_dim']}", "", "")
    return t


def print_summary(res, title: str) -> None:
    """For people, on stderr: the table, each failed file, the counts and where the files are."""
    err.print(summary_table(res.summary, escape(title)))
    for f in res.failures:
        print(f"failed: {f['id']}: {f['reason']}", file=sys.stderr)
    partial = len(res.summary.get("metric_failures", []))
    missing = f" ({partial} without some metric: warnings above, metric_errors in per_file.csv)" if partial else ""
    err.print(
        f"{res.summary['scored']}/{res.summary['files']} scored{missing}; per-file CSV and summary in {escape(str(res.out_dir))}",
        highlight=False,
    )


def evaluate(
    checkpoint: Optional[str] = typer.Argument(
        None, metavar="[CHECKPOINT]", help="Checkpoint, run directory or released model name (or give it with -m)."
    ),
    prepared_dir: Optional[Path] = typer.Argument(
        None, help="Prepared directory whose split is scored (`sdmvae prepare`, e.g. --test-only)."
    ),
    model: Optional[str] = typer.Option(
        None, "--model", "-m", help=MODEL_HELP.replace("; default: the released default", " (instead of CHECKPOINT)")
    ),
    split: Literal["train", "validation", "test"] = typer.Option("test", help="Split to score."),
    ref: Optional[Path] = typer.Option(
        None, help="Folder mode: reference audio folder, or one reference file (with an --est file)."
    ),
    est: Optional[Path] = typer.Option(
        None, help="Folder mode: estimated audio folder (paired by relative path), or one estimated file (with a --ref file)."
    ),
    out_dir: Optional[Path] = typer.Option(
        None,
        "--out",
        "-o",
        help="Where per_file.csv and summary.json go (default <run dir>/eval-<split>; ./eval-<name>-<split> for a released model; ./eval in folder mode).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON summary on stdout (instead of the summary.json path)."),
    jobs: int = typer.Option(0, "--jobs", "-j", min=0, help="Worker processes (0 = all cores)."),
    device: str = device_option("Where the split's codes are computed (scoring stays on CPU workers):"),
    limit: Optional[int] = typer.Option(None, min=1, help="Score only the first N utterances."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier evaluation in the output directory."),
) -> None:
    """Score resynthesis quality (PESQ P.862 raw and WB, STOI, ESTOI, SI-SDR) and latent sparsity (Hoyer)."""
    from sdmvae_cli.evaluation.evaluate import default_jobs, evaluate_checkpoint, evaluate_folders

    if model is not None:
        if prepared_dir is not None:
            raise UsageError("give the checkpoint once: CHECKPOINT PREPARED_DIR, or -m CHECKPOINT PREPARED_DIR")
        checkpoint, prepared_dir = model, Path(checkpoint) if checkpoint is not None else None
    n_jobs = jobs if jobs > 0 else default_jobs()
    if ref is not None or est is not None:
        if ref is None or est is None or checkpoint is not None:
            raise UsageError("folder mode takes --ref and --est, and no checkpoint")
        res = evaluate_folders(
            ref, est, out_dir or Path("eval"), jobs=n_jobs, progress_factory=lambda n: bar(n, "evaluate"), overwrite=overwrite
        )
        title = f"{est} vs {ref}"
    else:
        if checkpoint is None or prepared_dir is None:
            raise UsageError("give CHECKPOINT PREPARED_DIR, or --ref REF --est EST (two folders or two files)")
        res = evaluate_checkpoint(
            checkpoint,
            prepared_dir,
            split,
            out_dir,
            jobs=n_jobs,
            limit=limit,
            progress_factory=lambda n: bar(n, "evaluate"),
            overwrite=overwrite,
            device=str(resolve_device(device)),
        )
        title = f"{checkpoint} on {prepared_dir} [{split}]"
    print_summary(res, title)
    if as_json:
        emit_json(res.summary)
    else:
        emit(res.out_dir / "summary.json")
    if not res.ok:
        raise typer.Exit(1)


def table(
    results: List[Path] = typer.Argument(
        ..., help="summary.json files (or evaluation folders) from `sdmvae evaluate` (checkpoint or folder mode)."
    ),
    fmt: Literal["rich", "markdown", "csv"] = typer.Option("rich", "--format", "-f", help="rich, markdown or csv."),
    layout: Literal["runs", "table1", "orderings", "paired"] = typer.Option(
        "runs",
        "--layout",
        "-l",
        help="runs (one row per summary), table1 (the paper's layout, mean ± std over seeds), orderings (every pair of configurations: paired difference over files, 95% intervals over files and speakers, seed signs, significance) or paired (exactly two configurations, B - A, A the first summary's).",
    ),
    out_file: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Write to this file (any --format; rich as plain text) instead of stdout."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Render evaluation summaries: one row per run, the paper's Table 1 aggregated over seeds, or paired comparisons."""
    from sdmvae_cli.evaluation.table import render

    results = [r / "summary.json" if r.is_dir() else r for r in results]
    if out_file:
        check_file_destination(out_file, inputs=results, overwrite=overwrite)
    out = render(results, fmt, layout)
    if fmt == "rich":
        if out_file:
            rec = Console(record=True, width=200, file=io.StringIO())
            rec.print(out)
            write_text(out_file, rec.export_text())
            emit(out_file)
        else:
            term.print(out)
        return
    if out_file:
        write_text(out_file, out)
        emit(out_file)
    else:
        print(out, end="")
