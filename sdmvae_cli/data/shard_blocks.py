"""A shard's block of one split: checked against what its shard recorded before a merge writes
anything (:func:`check_block`), then copied into the merged split (:func:`concat_frames`,
:func:`concat_manifests`) block by block, never a split in memory. Used by
:mod:`sdmvae_cli.data.shards`.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from sdmvae_cli.core.atomic import atomic_path
from sdmvae_cli.core.errors import SdmvaeError


@dataclass(frozen=True)
class Block:
    """One shard's block of one split, as checked before a merge writes anything."""

    frames: Path  # its frames.npy: (rows x n_bins) float32, checked
    rows: int
    manifest: list[dict]  # its rows, frame offsets from 0, checked against ``rows``
    skipped: list
    files: list[tuple]  # its content entries


def read_json(path: Path) -> dict:
    """A JSON object, or {} where the file is missing, unreadable or not an object."""
    try:
        got = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return got if isinstance(got, dict) else {}


def check_block(split_dir: Path, done: dict, n_cols: int) -> Block:
    """A shard's split folder holds what its done marker records: a truncated, rewritten or
    foreign frames.npy or manifest is refused here, not found halfway through the merge."""
    shard = split_dir.parent.name
    try:
        rows, skipped = int(done["summary"]["frames"]), list(done["summary"]["skipped"])
        files = [(f[0], f[1], f[2], bool(f[3])) for f in done["files"]]
    except (KeyError, TypeError, ValueError, IndexError):
        raise SdmvaeError(f"{split_dir / '.done.json'}: not what shards write; re-run shard {shard}") from None
    frames = split_dir / "frames.npy"
    try:
        with open(frames, "rb") as f:
            _to_frames(f, frames, rows, n_cols)
    except OSError as exc:
        raise SdmvaeError(f"{frames}: cannot be read ({(exc.strerror or str(exc)).lower()}); re-run shard {shard}") from None
    return Block(frames, rows, block_manifest(split_dir / "manifest.jsonl", rows), skipped, files)


def block_manifest(src: Path, n: int) -> list[dict]:
    """A shard's manifest rows, each where its frames are (offsets from 0, one block after the
    other) and ``n`` frames in all; one line naming the file and its shard otherwise."""
    rows, local = [], 0
    try:
        with open(src, encoding="utf-8") as f:
            for line in filter(str.strip, f):
                row = json.loads(line)
                if not isinstance(row, dict) or "id" not in row or "path" not in row or row.get("frame_offset") != local:
                    raise ValueError(f"row {len(rows) + 1} is not where its frames are")
                local += int(row["n_frames"])
                rows.append(row)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        why = (getattr(exc, "strerror", None) or str(exc))[:80]
        raise SdmvaeError(f"{src}: unreadable ({why}); re-run shard {src.parent.parent.name}") from None
    if local != n:
        raise SdmvaeError(f"{src}: its rows hold {local} frames, its shard {n}; re-run shard {src.parent.parent.name}")
    return rows


def concat_frames(sources: Sequence[Path], rows: Sequence[int], target: Path, n_cols: int) -> None:
    """One float32 .npy from the shards' (``rows`` frames each), copied block by block (never a
    split in memory) under the header a one-machine prepare writes."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False, "shape": (sum(rows), n_cols)}
    with atomic_path(target, suffix=".npy") as tmp, open(tmp, "wb") as out:
        np.lib.format.write_array_header_1_0(out, header)
        for src, n in zip(sources, rows):
            with open(src, "rb") as f:
                _to_frames(f, src, n, n_cols)
                shutil.copyfileobj(f, out, length=16 << 20)


def _to_frames(f, src: Path, n: int, n_cols: int) -> None:
    """Move ``f`` past its .npy header, checking that it holds the (n x n_cols) float32 frames
    its shard recorded (a truncated or foreign file would make a wrong merge)."""
    try:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
    except (ValueError, OSError, EOFError) as exc:
        raise SdmvaeError(f"{src}: not a .npy file ({str(exc)[:80]}); re-run shard {src.parent.parent.name}") from None
    size = os.fstat(f.fileno()).st_size - f.tell()
    if dtype != np.dtype("<f4") or fortran or tuple(shape) != (n, n_cols) or size != n * n_cols * 4:
        raise SdmvaeError(
            f"{src}: {dtype} {tuple(shape)} ({size} bytes of data), not the float32 ({n}, {n_cols}) frames its shard "
            f"recorded; re-run shard {src.parent.parent.name}"
        )


def concat_manifests(manifests: Sequence[list[dict]], rows: Sequence[int], target: Path, paths: dict[str, str]) -> int:
    """The shards' manifests (checked: :func:`_block_manifest`) as one, each row's frame offset
    moved past the frames of the shards before it and its path the one this machine reads
    (``paths``, by id: a shard may have seen the corpus mounted elsewhere); returns the number
    of rows."""
    count, base = 0, 0
    with atomic_path(target) as tmp, open(tmp, "w", encoding="utf-8") as out:
        for manifest, n in zip(manifests, rows):
            for row in manifest:
                moved = {**row, "frame_offset": row["frame_offset"] + base, "path": paths.get(row["id"], row["path"])}
                out.write(json.dumps(moved) + "\n")
                count += 1
            base += n
    return count
