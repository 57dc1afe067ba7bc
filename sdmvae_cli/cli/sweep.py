"""`sdmvae sweep`: the command line over :func:`sdmvae_cli.training.sweep.run_sweep` (parsing only)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from sdmvae_cli.cli.common import device_option, err, plot_option, tb_every_option, tensorboard_option
from sdmvae_cli.core.distributed import is_main_process
from sdmvae_cli.core.errors import Interrupted


def sweep(
    prepared_dir: Path = typer.Argument(..., help="Output of `sdmvae prepare`."),
    spec: Path = typer.Argument(..., help="Sweep spec: JSON (or .toml) with 'common', 'runs' and/or 'grid'."),
    out: Path = typer.Option(..., "--out", "-o", help="Sweep folder: one run folder per member, and sweep.json."),
    device: str = device_option(),
    epochs: Optional[int] = typer.Option(None, min=1, help="Override every member's maximum epochs."),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue the sweep in --out (the same spec): members that have a last.pt continue, the others start.",
    ),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Replace the sweep already in --out (its sweep.json and its members' run files; default: refuse).",
    ),
    plot: bool = plot_option("each member's loss.png as it goes"),
    tensorboard: bool = tensorboard_option(
        "Each member's TensorBoard events in OUT/<name>/tb/ (pip install 'sdmvae[tensorboard]'); "
        "`tensorboard --logdir OUT` shows them side by side."
    ),
    tb_every: int = tb_every_option(),
    as_json: bool = typer.Option(False, "--json", help="Print sweep.json on stdout."),
) -> None:
    """Train many configurations and seeds at once (stacked); each member writes what `train` writes.

    Under torchrun the ranks share the stacks (README, "Scaling out"); rank 0 prints the results."""
    from sdmvae_cli.training.live_logs import LiveOptions
    from sdmvae_cli.training.sweep import run_sweep

    def on_epoch(m, r) -> None:
        mark = "*" if r.best else " "
        err.print(
            f"{m.name:>28s} epoch {r.epoch:4d} {mark} train {r.train_total:10.3f} val {r.val_total:10.3f} {r.seconds:6.2f}s",
            highlight=False,
        )

    def on_done(m) -> None:
        line = f"{m.name}: {m.status}" + (f" ({m.message})" if m.message else "")
        err.print(line if m.status != "diverged" else f"[red]{m.message}[/red]", highlight=False)

    try:
        summary = run_sweep(
            prepared_dir,
            spec,
            out,
            device=device,
            epochs=epochs,
            resume=resume,
            overwrite=overwrite,
            on_epoch=on_epoch,
            on_done=on_done,
            live=LiveOptions(plot=plot, tensorboard=tensorboard, tb_every=tb_every),
        )
    except KeyboardInterrupt:
        raise Interrupted(
            f"interrupted: each member that completed an epoch keeps it in its last.pt; continue with --resume "
            f"(see {out}/sweep.json)"
        ) from None
    if not is_main_process():  # torchrun: rank 0 prints the sweep's results, once
        return
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        for m in summary["members"]:
            if m.get("checkpoint"):
                print(m["checkpoint"])
        print(out / "sweep.json")
    err.print(
        f"{len(summary['members'])} members in stacks of {summary['stacks']}, {summary['wall_seconds']} s, "
        f"{summary['member_frames_per_s']:,.0f} member-frames/s",
        highlight=False,
    )
    if any(m["status"] == "diverged" for m in summary["members"]):
        sys.exit(1)


def sweep_stacks(
    spec: Path = typer.Argument(..., help="Sweep spec (JSON or .toml)."),
    out_dir: Path = typer.Option(..., "--out-dir", "-o", help="Folder for the per-stack specs."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace per-stack specs already there."),
) -> None:
    """Split a sweep spec into one spec per stack, to train the stacks side by side (one `sweep` each).

    stdout: the written specs, one per line."""
    from sdmvae_cli.training.spec import split_by_stack

    for p in split_by_stack(spec, out_dir, overwrite):
        print(p)
