"""`torchrun ... -m sdmvae_cli sweep`: the ranks of a launch share a sweep's stacks.

Rank 0 makes every check of the sweep folder (:mod:`sdmvae_cli.training.sweep_folder`) under
its lock, held for the whole sweep, and sends the members to every rank; each rank then trains
its share (:func:`share_stacks`) on its own device (one GPU per rank, ``LOCAL_RANK``; gloo on
CPUs) into the members' own folders, exactly as the one-process sweep does: a member's result
depends on its seed and options only, not on the stack it shares (:mod:`sdmvae_cli.training.stack`),
so it is the one-process sweep's to float rounding. Rank 0 writes ``sweep.json`` before any
member trains (after the earlier sweep's files are gone: a barrier) and, after every rank has
finished, the whole sweep's record. A rank killed mid-way ends the launch (torchrun stops the
others); every member keeps its last completed epoch and ``--resume`` continues them, on any
number of ranks.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable

from sdmvae_cli.core.atomic import write_json
from sdmvae_cli.core.device import resolve_device
from sdmvae_cli.core.distributed import (
    Launch,
    barrier,
    close_group,
    gather_objects,
    init_group,
    on_main,
    peer_stopped,
    rank_device,
)
from sdmvae_cli.core.errors import SdmvaeError
from sdmvae_cli.core.lock import lock_scope
from sdmvae_cli.training.live_logs import LiveOptions
from sdmvae_cli.training.options import EpochRecord
from sdmvae_cli.training.spec import SUMMARY
from sdmvae_cli.training.stack import Member, group_key
from sdmvae_cli.training.sweep_folder import plan_sweep, remove_members, sweep_summary
from sdmvae_cli.training.train import RunSpec, check_runs, train_runs

#: how long a rank may wait in a collective: the last one (the record) waits for the slowest
#: rank's whole share, hours on a large sweep; torch's default (30 min) would end a sweep whose
#: shares differ by more. A rank that dies is seen by torchrun, which stops the others at once.
SWEEP_WAIT_S = 30 * 24 * 3600.0


def share_stacks(keys: list[str], world: int) -> list[list[int]]:
    """Which members (indices into ``keys``, each member's stack key) each rank trains.

    The stacks are formed as in one process (members with one key share a stack). With fewer
    stacks than ranks, the largest stack is halved until every rank has one or none is left to
    halve; then the stacks go, largest first, to the rank with the fewest members (the lowest
    rank on a tie). Deterministic: every rank computes the same shares from the same spec."""
    groups: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    parts = list(groups.values())
    while len(parts) < world:
        j = max(range(len(parts)), key=lambda n: len(parts[n]), default=None)
        if j is None or len(parts[j]) < 2:
            break
        big = parts.pop(j)
        parts[j:j] = [big[: (len(big) + 1) // 2], big[(len(big) + 1) // 2 :]]
    shares: list[list[int]] = [[] for _ in range(world)]
    for part in sorted(parts, key=len, reverse=True):  # a stable sort: equal sizes keep the spec's order
        rank = min(range(world), key=lambda r: (len(shares[r]), r))
        shares[rank].extend(part)
    return [sorted(s) for s in shares]


def _plan(prepared_dir, spec_path, out_dir: Path, device: str, dev, epochs, resume: bool, overwrite: bool, held: ExitStack):
    """Rank 0's checks, those of the one-process sweep, every one before anything is written (the
    members' own checks included: :func:`~sdmvae_cli.training.train.check_runs`); the folder stays locked."""
    specs, replaced = plan_sweep(prepared_dir, spec_path, out_dir, device, epochs, resume, overwrite, held)
    check_runs(prepared_dir, specs, dev)
    return specs, replaced


@lock_scope
def _start(out_dir: Path, replaced: list[str], record: dict[str, Any]) -> None:
    """Rank 0, once every check has passed: the earlier sweep's members go (each claimed while
    its files are removed), and sweep.json lists this sweep's members before any trains."""
    remove_members(out_dir, replaced)
    write_json(out_dir / SUMMARY, record)


def distributed_sweep(
    launch: Launch,
    prepared_dir: str | Path,
    spec_path: str | Path,
    out_dir: Path,
    *,
    device: str,
    epochs: int | None,
    resume: bool,
    overwrite: bool,
    on_epoch: Callable[[Member, EpochRecord], None] | None,
    on_done: Callable[[Member], None] | None,
    live: LiveOptions | None,
) -> dict[str, Any]:
    """This rank's share of the sweep; returns the whole sweep's record (written by rank 0).
    The group is gloo's whatever the device: it carries only the plan, a barrier and the record."""
    dev = resolve_device(rank_device(device, launch))
    init_group(launch, dev, timeout_s=SWEEP_WAIT_S, backend="gloo")
    try:
        with ExitStack() as held:
            specs, replaced = on_main(
                lambda: _plan(prepared_dir, spec_path, out_dir, device, dev, epochs, resume, overwrite, held), launch
            )
            shares = share_stacks([group_key(s.model, s.opts, s.name) for s in specs], launch.world)
            mine = [specs[i] for i in shares[launch.rank]]
            for s in mine:
                s.opts.device = str(dev)
            if launch.is_main:
                _start(out_dir, replaced, _record(specs, shares, prepared_dir, spec_path))
            barrier()  # the earlier sweep's files are gone before any rank writes a member
            t0, members = time.perf_counter(), []
            try:
                part = _train_share(prepared_dir, mine, dev, on_epoch, on_done, live, spec_path, members)
            except KeyboardInterrupt:
                _record_stop(launch, out_dir, specs, shares, members, mine, time.perf_counter() - t0, prepared_dir, spec_path)
                raise
            except Exception as exc:
                if not peer_stopped(exc):
                    raise
                _record_stop(launch, out_dir, specs, shares, members, mine, time.perf_counter() - t0, prepared_dir, spec_path)
                raise SdmvaeError(
                    "another rank of the launch stopped; every member keeps its last completed epoch: continue with --resume"
                ) from None
            summary = _merge(gather_objects(part), specs, shares)
            if launch.is_main:
                write_json(out_dir / SUMMARY, summary)
            return summary
    finally:
        close_group()


def _record_stop(launch: Launch, out_dir: Path, specs, shares, members, mine, wall: float, prepared_dir, spec_path) -> None:
    """sweep.json after a Ctrl-C or a rank's death, by rank 0, best effort and without a
    collective: its own members as they are, the other ranks' marked interrupted."""
    if launch.is_main:
        record = _record(specs, shares, prepared_dir, spec_path, interrupted=True)
        own = sweep_summary(members, mine, wall, [], True, prepared_dir, spec_path)["members"]
        write_json(out_dir / SUMMARY, _with_rows(record, own) | {"wall_seconds": round(wall, 2)})


def _train_share(prepared_dir, mine: list[RunSpec], dev, on_epoch, on_done, live, spec_path, members: list) -> dict[str, Any]:
    """Train this rank's members (none: nothing to do) and summarise them as a sweep of their own;
    ``members`` receives them as soon as they are open (for a Ctrl-C)."""
    t0, groups = time.perf_counter(), []
    if mine:
        train_runs(
            prepared_dir,
            mine,
            dev,
            on_epoch=on_epoch,
            on_done=on_done,
            on_group=lambda ms: groups.append(len(ms)),
            on_open=members.extend,
            live=live,
        )
    return sweep_summary(members, mine, time.perf_counter() - t0, groups, False, prepared_dir, spec_path)


def _with_rows(record: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``record`` with these members' rows in place of theirs."""
    by_name = {r["name"]: r for r in rows}
    return record | {"members": [by_name.get(r["name"], r) for r in record["members"]]}


def _record(specs: list[RunSpec], shares: list[list[int]], prepared_dir, spec_path, interrupted: bool = False) -> dict[str, Any]:
    """sweep.json before training: every member listed, none run yet (--resume knows them); after
    a Ctrl-C, each listed as interrupted (its last.pt holds its last completed epoch)."""
    base = sweep_summary([], specs, 0.0, [], interrupted, prepared_dir, spec_path)
    return base | {"ranks": _ranks(specs, shares, [[] for _ in shares])}


def _ranks(specs: list[RunSpec], shares: list[list[int]], stacks: list[list[int]]) -> list[dict[str, Any]]:
    return [{"rank": r, "members": [specs[i].name for i in share], "stacks": stacks[r]} for r, share in enumerate(shares)]


def _merge(parts: list[dict[str, Any]], specs: list[RunSpec], shares: list[list[int]]) -> dict[str, Any]:
    """The ranks' summaries as one sweep's: members in the spec's order, stacks per rank, the
    wall time of the slowest rank and the member-frames/s of all ranks together."""
    rows = {row["name"]: row for part in parts for row in part["members"]}
    wall = max(p["wall_seconds"] for p in parts)
    rate = sum(p["member_frames_per_s"] or 0.0 for p in parts)
    return parts[0] | {
        "members": [rows[s.name] for s in specs],
        "stacks": [n for p in parts for n in p["stacks"]],
        "wall_seconds": wall,
        "member_frames_per_s": round(rate, 1),
        "ranks": _ranks(specs, shares, [p["stacks"] for p in parts]),
    }
