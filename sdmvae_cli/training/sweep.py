"""`sdmvae sweep`: many configurations and seeds trained at once, in one process (or shared by torchrun's ranks).

The runs of a spec (:mod:`sdmvae_cli.training.spec`) that differ only in seed, lr, patience, epochs,
stop_on or scalar hyper-parameters share one stack (:mod:`sdmvae_cli.training.stack`); each writes
``OUT/<name>/`` exactly as `sdmvae train` (its loss.png and TensorBoard events too, as it goes:
:mod:`sdmvae_cli.training.live_logs`). The sweep folder is locked while a sweep writes it
(:mod:`sdmvae_cli.core.lock`), holds one sweep (``sweep.json``, replaced only with ``overwrite``),
and no member may be named like its own files.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from sdmvae_cli.core.atomic import write_json
from sdmvae_cli.core.distributed import launch_from_env
from sdmvae_cli.core.errors import UsageError
from sdmvae_cli.training.distributed_sweep import distributed_sweep
from sdmvae_cli.training.live_logs import LiveOptions
from sdmvae_cli.training.options import EpochRecord
from sdmvae_cli.training.spec import SUMMARY
from sdmvae_cli.training.stack import Member
from sdmvae_cli.training.sweep_folder import plan_sweep, remove_members, sweep_summary
from sdmvae_cli.training.train import RunSpec, train_runs


def run_sweep(
    prepared_dir: str | Path,
    spec_path: str | Path,
    out_dir: str | Path,
    *,
    device: str = "auto",
    epochs: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    on_epoch: Callable[[Member, EpochRecord], None] | None = None,
    on_done: Callable[[Member], None] | None = None,
    live: LiveOptions | None = None,
) -> dict[str, Any]:
    """Train every run of the spec; returns (and writes) the sweep summary ``OUT/sweep.json``.
    ``live``: each member's loss.png and TensorBoard events as it goes (None: neither).

    A folder holding a sweep (its sweep.json) or a member's folder is refused unless ``resume``
    (the same members: those with a last.pt continue, the others start) or ``overwrite`` (the
    earlier sweep is replaced, as `train --overwrite` replaces a run: its members' run files are
    removed once every check has passed). The folder is locked while the sweep writes it: a
    second process is refused. Under torchrun (more than one process) the ranks share the stacks
    (:mod:`sdmvae_cli.training.distributed_sweep`). KeyboardInterrupt propagates after
    sweep.json is written (every member keeps its last completed epoch)."""
    if resume and overwrite:
        raise UsageError("--resume continues a sweep and --overwrite replaces it: give one of them")
    out_dir = Path(out_dir)
    launch = launch_from_env()
    if launch is not None:  # torchrun: the ranks share the stacks
        return distributed_sweep(
            launch,
            prepared_dir,
            spec_path,
            out_dir,
            device=device,
            epochs=epochs,
            resume=resume,
            overwrite=overwrite,
            on_epoch=on_epoch,
            on_done=on_done,
            live=live,
        )
    with ExitStack() as held:  # the folder stays locked while the sweep writes it
        specs, replaced = plan_sweep(prepared_dir, spec_path, out_dir, device, epochs, resume, overwrite, held)
        return _train(prepared_dir, spec_path, out_dir, specs, replaced, device, on_epoch, on_done, live)


def _train(
    prepared_dir,
    spec_path,
    out_dir: Path,
    specs: list[RunSpec],
    replaced: list[str],
    device: str,
    on_epoch: Callable[[Member, EpochRecord], None] | None,
    on_done: Callable[[Member], None] | None,
    live: LiveOptions | None,
) -> dict[str, Any]:
    """Train the members; sweep.json is written as each stack starts (after every check: a
    sweep killed mid-way still has its record, so another spec is refused and --resume knows
    its members) and once more at the end."""
    t0 = time.perf_counter()
    members: list[Member] = []
    groups: list[int] = []

    def write(interrupted: bool) -> dict[str, Any]:
        summary = sweep_summary(members, specs, time.perf_counter() - t0, groups, interrupted, prepared_dir, spec_path)
        write_json(out_dir / SUMMARY, summary)
        return summary

    def on_group(ms: list[Member]) -> None:
        if not groups:  # every check passed, the first stack starts: the earlier sweep goes now (--overwrite)
            remove_members(out_dir, replaced)
        groups.append(len(ms))
        write(False)

    def on_open(ms: list[Member]) -> None:  # so that a Ctrl-C still reports each member's own status
        members[:] = ms

    interrupted = completed = False
    try:
        members = train_runs(
            prepared_dir, specs, device, on_epoch=on_epoch, on_done=on_done, on_group=on_group, on_open=on_open, live=live
        )
        completed = True
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        if groups or completed:  # a sweep refused before any stack started leaves the earlier sweep.json (or none)
            summary = write(interrupted)
    return summary
