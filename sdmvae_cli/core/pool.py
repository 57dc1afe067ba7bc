"""THE process pool of prepare, resynth and evaluate: forked, single-threaded workers that
survive a crash of the library they call.

Why one pool of our own rather than ``concurrent.futures``: a worker that dies inside a C
library (the ``pesq`` library overflows a fixed buffer on some files and takes the process
with it) breaks a ``ProcessPoolExecutor`` for every file after it; here only that item fails
(:class:`Failure`, with the signal's name) and a fresh worker takes the next one. Workers are
forked, so modules the parent warmed up (librosa's compiled kernels, pesq, the model) are
inherited instead of loaded again; each runs one thread (N workers on N cores, not N x N
threads) and ignores Ctrl-C, which is the parent's to handle.
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection
import signal
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from sdmvae_cli.core.threads import single_threaded


@dataclass(frozen=True)
class Failure:
    """An item whose function raised (``reason``: the exception's type and first line) or whose
    worker died (``crashed``: True, ``reason`` names the signal or exit status)."""

    reason: str
    crashed: bool = False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}{': ' + text.splitlines()[0][:160] if text else ''}"


def _crash_reason(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            how = signal.Signals(-exitcode).name
        except ValueError:
            how = f"signal {-exitcode}"
    else:
        how = f"exit status {exitcode}"
    return f"the worker process died ({how}) on this item"


def _worker_main(conn, fn: Callable, init: Callable | None, initargs: tuple) -> None:
    """(index, item) in, (index, result or Failure) out; None ends the loop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    single_threaded()
    if init:
        init(*initargs)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if msg is None:
            return
        i, item = msg
        try:
            result = fn(item)
        except Exception as exc:  # this item's failure, not the pool's
            result = Failure(_first_line(exc))
        conn.send((i, result))


class _Worker:
    def __init__(self, ctx, fn: Callable, init: Callable | None, initargs: tuple):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, fn, init, initargs), daemon=True)
        self.proc.start()
        child.close()
        self.task: tuple[int, Any] | None = None

    def give(self, task: tuple[int, Any]) -> None:
        self.task = task
        self.conn.send(task)

    def take(self) -> tuple[int, Any]:
        """The finished (index, result), or the held item's Failure when the worker died."""
        try:
            if not self.conn.poll():
                raise EOFError
            return self.conn.recv()
        except (EOFError, OSError):
            self.proc.join()
            return self.task[0], Failure(_crash_reason(self.proc.exitcode), crashed=True)

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.proc.kill()
        else:
            try:
                self.conn.send(None)
            except OSError:
                pass
        self.proc.join(timeout=None if kill else 5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


def imap_unordered(
    fn: Callable, items: Iterable[tuple[int, Any]], jobs: int, init: Callable | None = None, initargs: tuple = ()
) -> Iterator[tuple[int, Any]]:
    """(index, fn(item) or :class:`Failure`) for each ``(index, item)``, as workers finish, in
    ``jobs`` forked workers (at least one: crash isolation). ``fn``, ``init`` and the items
    must be picklable only as far as fork needs (the function is inherited, items are sent)."""
    pending = deque(items)
    if not pending:
        return
    ctx = mp.get_context("fork")
    workers = [_Worker(ctx, fn, init, initargs) for _ in range(min(max(1, jobs), len(pending)))]
    try:
        for w in workers:
            w.give(pending.popleft())
        while any(w.task is not None for w in workers):
            busy = [w for w in workers if w.task is not None]
            ready = set(mp.connection.wait([w.conn for w in busy] + [w.proc.sentinel for w in busy]))
            for k, w in enumerate(workers):
                if w.task is None or (w.conn not in ready and w.proc.sentinel not in ready):
                    continue
                i, result = w.take()
                if isinstance(result, Failure) and result.crashed:
                    w.stop(kill=True)
                    w = workers[k] = _Worker(ctx, fn, init, initargs)
                w.task = None
                if pending:
                    w.give(pending.popleft())
                yield i, result
    finally:
        for w in workers:
            w.stop(kill=w.task is not None)


def map_ordered(fn: Callable, items: list, jobs: int, init: Callable | None = None, initargs: tuple = ()) -> Iterator[Any]:
    """fn(item) (or its :class:`Failure`) in item order; in this process when ``jobs`` <= 1
    (``init`` is then not called, and an exception propagates as it is), else through :func:`imap_unordered`, holding
    back results that finish before their predecessors."""
    if jobs <= 1 or len(items) <= 1:
        for it in items:
            yield fn(it)
        return
    held: dict[int, Any] = {}
    nxt = 0
    for i, result in imap_unordered(fn, enumerate(items), jobs, init, initargs):
        held[i] = result
        while nxt in held:
            yield held.pop(nxt)
            nxt += 1
