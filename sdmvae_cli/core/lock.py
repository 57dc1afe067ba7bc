"""One writer per output folder: an advisory lock held for a command's life.

Why: two processes writing one run, sweep, evaluation or report folder at once each exited 0
with the other's files mixed into theirs (``torchrun --nproc-per-node 2 -m sdmvae_cli sweep``
runs the whole sweep once per rank; a command started twice from a shell history does the
same). Every writer of such a folder holds ``fcntl.flock`` on a lock file in it
(:data:`LOCK_NAME`) while it works, and a second writer is refused with one line naming the
holder (pid, host, start, command: written into the lock file by the holder).

Why flock: the kernel drops the lock when its holder dies, so a crash (kill -9, out of memory)
never leaves a stale lock; the file may stay behind and the next writer simply takes it. The
file is removed when its holder finishes (after checking it is still the file it locked, so a
writer waiting on a removed file retries instead of locking nothing). A lock the filesystem
cannot take (some network or FUSE mounts) is a warning, not an error: the folder is then as
unguarded as it was before locks.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import fcntl
import functools
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from sdmvae_cli.core.errors import SdmvaeError
from sdmvae_cli.core.outputs import check_dir_destination, check_writable_location

log = logging.getLogger("sdmvae")

#: the lock file inside a locked folder (a leading dot: a sweep refuses it as a member name)
LOCK_NAME = ".sdmvae.lock"

#: lock files this process holds: path -> [fd, depth, pid]. A folder locked again by the process
#: holding it (nested library calls) is not a second writer; ``pid`` tells a forked child,
#: which closes its inherited copies (see _drop_inherited), from the holder.
_held: dict[str, list[int]] = {}


def lock_path(folder: str | os.PathLike, beside: bool = False) -> Path:
    """The lock file of ``folder``: inside it, or (``beside``) next to it, for a folder that is
    built elsewhere and renamed into place (a report), where a file inside would move away."""
    folder = Path(folder)
    return folder.parent / f".{folder.name}{LOCK_NAME}" if beside else folder / LOCK_NAME


def _holder() -> str:
    prog = Path(sys.argv[0]).name if sys.argv else "python"
    cmd = " ".join(["sdmvae" if prog == "__main__.py" else prog, *sys.argv[1:]])  # `python -m sdmvae_cli` is sdmvae
    return json.dumps(
        {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": cmd[:300]}
    )


def _describe(fd: int) -> str:
    """Who holds the lock, from what the holder wrote (best effort: it may not have written yet)."""
    try:
        d = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
        text = f"pid {int(d['pid'])} on {d['host']} since {d['started']}: {d['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another sdmvae process"
    text = "".join(c if c.isprintable() else " " for c in text)  # one line, whatever the command held
    return text if len(text) <= 200 else text[:197] + "..."


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _made_dirs(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; returns those it created, deepest first (a
    refused command removes them again if they stayed empty: it leaves no folder behind)."""
    missing, p = [], Path(os.path.abspath(folder))
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SdmvaeError(f"cannot write {folder}: {os.strerror(exc.errno).lower() if exc.errno else exc}") from None
    return missing


def _acquire(path: Path, folder: Path) -> int | None:
    """An fd holding the flock on ``path`` (None where the filesystem has no locks), or the
    one-line refusal when another process holds it."""
    for _ in range(100):  # retried only while a finishing holder removes the file under us
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o666)  # a planted link is not followed
        except FileNotFoundError:  # the folder went away between mkdir and open (a holder's cleanup)
            path.parent.mkdir(parents=True, exist_ok=True)
            continue
        except OSError as exc:
            why = os.strerror(exc.errno).lower() if exc.errno else str(exc)
            raise SdmvaeError(f"cannot write {folder}: {path} cannot be created ({why})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            who = _describe(fd)
            os.close(fd)
            raise SdmvaeError(
                f"{folder} is in use by another sdmvae process ({who}); wait for it to finish, or write elsewhere"
            ) from None
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                os.close(fd)
                raise
            log.warning("%s: this filesystem cannot lock files; make sure no other process writes this folder", folder)
            os.close(fd)
            return None
        if _same_file(fd, path):
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, _holder().encode(), 0)
            except OSError as exc:  # a full disk: the lock is not kept half-made
                _release(fd, path)
                raise SdmvaeError(
                    f"cannot write {folder}: {path} ({os.strerror(exc.errno).lower() if exc.errno else exc})"
                ) from None
            return fd
        os.close(fd)  # locked a file its holder had just removed: take the new one
    raise SdmvaeError(f"could not lock {folder}: its lock file keeps being replaced")


def _release(fd: int, path: Path) -> None:
    try:
        if _same_file(fd, path):
            path.unlink()  # while still holding it: a waiter that opened it retries (_same_file)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, *, beside: bool = False) -> Iterator[Path]:
    """Hold the lock of ``folder`` (created if missing) for the ``with`` block; yields the lock
    file. Another process holding it: :class:`SdmvaeError` (one line naming it), before the
    block runs. Folders this call created are removed at the end if they are still empty."""

    folder = Path(folder)
    path = lock_path(folder, beside)
    key = os.path.realpath(path)
    mine = _held.get(key)
    if mine is not None and mine[2] == os.getpid():  # this process holds it already
        mine[1] += 1
        try:
            yield path
        finally:
            mine[1] -= 1
        return
    if beside:
        check_writable_location(path)
    else:
        check_dir_destination(folder)  # a file there, or an unwritable place: the usual one line
    made = _made_dirs(path.parent)
    fd = None
    try:
        fd = _acquire(path, folder)
        if fd is not None:
            _held[key] = [fd, 1, os.getpid()]
        yield path
    finally:
        if fd is not None and _held.pop(key, None) is not None:  # not in a forked child: its copy is closed
            _release(fd, path)
        for d in made:
            try:
                d.rmdir()
            except OSError:  # not empty: the command wrote there
                break


# -- locks held until a library call returns ---------------------------------------------------
#: the ExitStack of the innermost :func:`lock_scope` call on this thread
_scope: contextvars.ContextVar[contextlib.ExitStack | None] = contextvars.ContextVar("sdmvae_lock_scope", default=None)

F = TypeVar("F", bound=Callable[..., Any])


def lock_scope(fn: F) -> F:
    """Decorator: every folder :func:`claim_folder` locks during a call of ``fn`` stays locked
    until that call returns or raises. Why: a command claims its folder where it checks it
    (``check_out_dir``, ``check_run_dir``), deep inside the call that then writes it, and the
    lock must last until that call ends, not until the check's ``with`` block does."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with contextlib.ExitStack() as stack:
            token = _scope.set(stack)
            try:
                return fn(*args, **kwargs)
            finally:
                _scope.reset(token)

    return wrapper  # type: ignore[return-value]


def claim_folder(folder: str | os.PathLike, *, beside: bool = False) -> None:
    """Lock ``folder`` (:func:`folder_lock`) until the enclosing :func:`lock_scope` call ends.
    Outside any scope the folder is only checked to be free (locked and released at once)."""
    stack = _scope.get()
    if stack is None:
        with folder_lock(folder, beside=beside):
            return
    stack.enter_context(folder_lock(folder, beside=beside))


def _drop_inherited() -> None:
    """In a forked child (evaluation and resynthesis workers): close the inherited lock fds.
    Closing a copy never releases the parent's lock; it keeps a worker that outlives a killed
    parent from holding the folder locked."""
    for fd, _, _ in list(_held.values()):
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


os.register_at_fork(after_in_child=_drop_inherited)
