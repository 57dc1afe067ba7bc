"""Output destinations: checked before any work starts, then written atomically.

Why one module: every command that writes follows the same rules (README, "What sdmvae
promises"): an input is never overwritten, an earlier result only with ``--overwrite``, and a
destination that cannot be written is reported *before* minutes of work, not after them. The
writing itself is :mod:`sdmvae_cli.core.atomic` (temporary file beside the target, then rename), so
an interrupted run never leaves a file that looks complete.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Iterable

from sdmvae_cli.core.atomic import atomic_path, write_json, write_text  # noqa: F401  (the writers, re-exported)
from sdmvae_cli.core.errors import SdmvaeError, UsageError


def real(path: str | os.PathLike) -> str:
    """The canonical path (symlinks and '..' resolved) used to compare destinations and inputs."""
    return os.path.realpath(os.path.abspath(path))


def is_within(child: str | os.PathLike, parent: str | os.PathLike) -> bool:
    """True when ``child`` is ``parent`` or lies under it (canonical paths)."""
    c, p = real(child), real(parent)
    return c == p or c.startswith(p.rstrip(os.sep) + os.sep)


def _first_existing(path: Path) -> Path:
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable_location(path: str | os.PathLike) -> None:
    """The file or directory ``path`` can be created: its nearest existing ancestor is a
    directory in which a file can really be made (a probe file, created and removed: root
    ignores permission bits, a read-only mount does not)."""
    path = Path(path)
    anc = _first_existing(path.parent if not path.is_dir() else path)
    if not anc.is_dir():
        raise SdmvaeError(f"cannot write {path}: {anc} is a file, not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".sdmvae-probe.", dir=anc)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        raise SdmvaeError(f"cannot write {path}: {anc} is not writable ({why.lower()})") from None


def check_file_destination(dst: str | os.PathLike, *, inputs: Iterable[str | os.PathLike] = (), overwrite: bool = False) -> None:
    """Refuse a file destination that is an input (always), that lies inside an input folder
    (always: usage, exit 2; a later run over that folder would read it as an input), that exists
    (unless ``overwrite``), that is a directory, or that cannot be created."""
    dst = Path(dst)
    d = real(dst)
    for src in inputs:
        if real(src) == d:
            raise SdmvaeError(f"{dst} is an input of this command; choose another output (inputs are never overwritten)")
        if os.path.isdir(src) and is_within(dst, src):
            raise UsageError(f"{dst} is inside the input folder {src}; write it outside the inputs")
    if dst.is_dir():
        raise SdmvaeError(f"{dst} is a directory; expected a file name")
    if dst.exists() and not overwrite:
        raise SdmvaeError(f"{dst} already exists; pass --overwrite to replace it")
    check_writable_location(dst)


def check_files_destinations(dsts: Iterable[Path], *, inputs: Iterable[str | os.PathLike] = (), overwrite: bool = False) -> None:
    """Many destinations at once (a mirrored folder): every check made before the first file is
    written; duplicates and collisions with inputs reported with a count and an example."""
    dsts = list(dsts)
    srcs = {real(s) for s in inputs}
    seen: dict[str, Path] = {}
    clash, exist = [], []
    for dst in dsts:
        d = real(dst)
        if d in srcs:
            clash.append(dst)
        if d in seen:
            raise SdmvaeError(f"two inputs would be written to the same output {dst}; rename one of them")
        seen[d] = dst
        if dst.exists() and not overwrite:
            exist.append(dst)
    if len(clash) == 1:
        raise SdmvaeError(f"{clash[0]} is an input of this command; choose another output (inputs are never overwritten)")
    if clash:
        raise SdmvaeError(f"{len(clash)} outputs would overwrite an input (e.g. {clash[0]}); choose another output location")
    if exist:
        raise SdmvaeError(f"{len(exist)} output file(s) already exist (e.g. {exist[0]}); pass --overwrite to replace them")
    for parent in sorted({dst.parent for dst in dsts}):
        if parent.exists() and not parent.is_dir():
            raise SdmvaeError(f"cannot write under {parent}: it is a file, not a directory")
    for dst in dsts[:1]:
        check_writable_location(dst)


def check_dir_destination(out: str | os.PathLike, *, inputs: Iterable[str | os.PathLike] = ()) -> None:
    """An output directory: not a file, not an input folder nor inside one (whose next run would
    read the outputs as inputs), creatable."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SdmvaeError(f"output directory {out} is a file")
    for src in inputs:
        if is_within(out, src):
            raise SdmvaeError(
                f"output directory {out} is, or is inside, the input {src}; choose a separate folder (inputs are never overwritten)"
            )
    check_writable_location(out)


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the ``.<name>.*.tmp`` files :func:`atomic_path` leaves when a process is killed
    (kill -9 gives no chance to clean up). Only call it on a folder this command owns, with no
    other run writing into it."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.glob(".*.tmp"):
        try:
            p.unlink()
            removed.append(p)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno not in (errno.EISDIR,):
                raise
    return removed
