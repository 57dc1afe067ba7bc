"""The training loop over a stack: lock-step epochs, then per member its record, early stopping
(:mod:`sdmvae_cli.training.early_stopping`) and checkpoints, until every member has stopped.

The caller (:func:`sdmvae_cli.training.train.train_runs`) supplies what happens with a member's
epoch through :class:`StackCallbacks`: saving its checkpoints, showing it (loss.png, TensorBoard:
:mod:`sdmvae_cli.training.live_logs`), printing its progress.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from sdmvae_cli.training.early_stopping import check_stop, diverged, record_validation, stop_statistic
from sdmvae_cli.training.options import VALIDATION_COLUMNS, EpochRecord
from sdmvae_cli.training.stack import Member, Stack


@dataclass
class StackCallbacks:
    on_epoch: Callable[[Member, EpochRecord], None] | None = None
    save: Callable[[Stack, int, Member, bool], None] | None = None  # (stack, index, member, improved)
    on_done: Callable[[Member], None] | None = None
    #: after the save (the epoch is on record; ``member.done`` on its last): the live views, which may read the member's weights
    show: Callable[[Stack, int, Member, EpochRecord], None] | None = None


def train_stack(stack: Stack, cb: StackCallbacks) -> None:
    """Lock-step epochs until every member has stopped; Ctrl-C marks the running ones interrupted
    (their last.pt holds the last completed epoch) and re-raises. A quarter of the stack done:
    the stack drops its done members (:meth:`Stack.compact`)."""
    try:
        while stack.members and any(not m.done for m in stack.members):
            epoch = min(m.epoch for m in stack.members if not m.done)
            t0 = time.perf_counter()
            n_seen = stack.run_epoch(epoch)
            train_means = (stack.acc / max(1, n_seen)).tolist()
            val = stack.validate().tolist()
            if stack.device.type == "cuda":
                torch.cuda.synchronize()
            secs = time.perf_counter() - t0
            for i, m in enumerate(stack.members):
                if m.done:
                    continue
                _finish_epoch(stack, i, m, epoch, train_means[i], val[i], secs, n_seen, cb)
            if sum(m.done for m in stack.members) * 4 >= len(stack.members) and any(not m.done for m in stack.members):
                stack.compact()
    except KeyboardInterrupt:
        for m in stack.members:
            if not m.done:
                m.status, m.message = "interrupted", f"interrupted; {m.run_dir / 'last.pt'} holds the last completed epoch"
        raise


def _finish_epoch(
    stack: Stack, i: int, m: Member, epoch: int, tr: list[float], va: list[float], secs: float, n_seen: int, cb: StackCallbacks
) -> None:
    """Member ``i``'s end of an epoch: diverged, or its record, early stopping and checkpoints."""
    vals = dict(zip(VALIDATION_COLUMNS, va))
    crit = stop_statistic(m, vals)
    if diverged(m, epoch, tr, crit):
        _retire(stack, i, m, cb)
        return
    improved = record_validation(m, epoch, crit)
    rec = EpochRecord(
        epoch,
        *tr,
        **vals,
        seconds=round(secs, 4),
        frames_per_s=round(n_seen / secs, 1),
        best=improved,
        engine=stack.engine,
        stack_members=len(stack.members),
    )
    m.history.append(asdict(rec))
    m.epoch = epoch + 1
    check_stop(m)
    if cb.save:
        cb.save(stack, i, m, improved)
    m.wrote_checkpoint = True
    if cb.show:
        cb.show(stack, i, m, rec)
    if cb.on_epoch:
        cb.on_epoch(m, rec)
    if m.done:
        _retire(stack, i, m, cb)


def _retire(stack: Stack, i: int, m: Member, cb: StackCallbacks) -> None:
    """A member that is done: masked out of the stack's steps at once (its gradient is zero)."""
    stack.active[i] = 0.0
    if cb.on_done:
        cb.on_done(m)
