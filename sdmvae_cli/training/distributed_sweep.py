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
from sdmvae_cli.core.distributed import Launch, barrier, close_group, gather_objects, init_group, on_main, rank_device
from sdmvae_cli.core.lock import folder_lock
from sdmvae_cli.core.outputs import check_dir_destination
from sdmvae_cli.training.live_logs import LiveOptions
from sdmvae_cli.training.options import EpochRecord
from sdmvae_cli.training.spec import SUMMARY, expand_spec, read_spec
from sdmvae_cli.training.stack import Member, group_key
from sdmvae_cli.training.sweep_folder import earlier_sweep, member_specs, remove_members, sweep_summary
from sdmvae_cli.training.train import RunSpec, check_prepared, train_runs

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


def _plan(prepared_dir, spec_path, out_dir: Path, device: str, epochs, resume: bool, overwrite: bool, held: ExitStack):
    """Rank 0's checks, made as the one-process sweep makes them; the folder stays locked."""
    runs = expand_spec(read_spec(spec_path))
    check_prepared(Path(prepared_dir))
    check_dir_destination(out_dir, inputs=[prepared_dir])
    held.enter_context(folder_lock(out_dir))
    replaced = earlier_sweep(out_dir, [name for name, _, _ in runs], resume, overwrite)
    return member_specs(out_dir, runs, device, epochs, resume, overwrite), replaced


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
    """This rank's share of the sweep; returns the whole sweep's record (written by rank 0)."""
    dev = resolve_device(rank_device(device, launch))
    init_group(launch, dev, timeout_s=SWEEP_WAIT_S)
    try:
        with ExitStack() as held:
            specs, replaced = on_main(
                lambda: _plan(prepared_dir, spec_path, out_dir, device, epochs, resume, overwrite, held), launch
            )
            shares = share_stacks([group_key(s.model, s.opts) for s in specs], launch.world)
            mine = [specs[i] for i in shares[launch.rank]]
            for s in mine:
                s.opts.device = str(dev)
            if launch.is_main:
                remove_members(out_dir, replaced)
                write_json(out_dir / SUMMARY, _record(specs, shares, prepared_dir, spec_path))
            barrier()  # the earlier sweep's files are gone before any rank writes a member
            part = _train_share(prepared_dir, mine, dev, on_epoch, on_done, live, spec_path)
            summary = _merge(gather_objects(part), specs, shares)
            if launch.is_main:
                write_json(out_dir / SUMMARY, summary)
            return summary
    finally:
        close_group()


def _train_share(prepared_dir, mine: list[RunSpec], dev, on_epoch, on_done, live, spec_path) -> dict[str, Any]:
    """Train this rank's members (none: nothing to do) and summarise them as a sweep of their own."""
    t0, groups = time.perf_counter(), []
    members = (
        train_runs(
            prepared_dir, mine, dev, on_epoch=on_epoch, on_done=on_done, on_group=lambda ms: groups.append(len(ms)), live=live
        )
        if mine
        else []
    )
    return sweep_summary(members, mine, time.perf_counter() - t0, groups, False, prepared_dir, spec_path)


def _record(specs: list[RunSpec], shares: list[list[int]], prepared_dir, spec_path) -> dict[str, Any]:
    """sweep.json before training: every member listed, none run yet (--resume knows them)."""
    base = sweep_summary([], specs, 0.0, [], False, prepared_dir, spec_path)
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
