"""Prepared frames as training data: memmap on disk, device-resident chunks in training.

When a split fits (its bytes under ``max_device_bytes``) it is copied once onto the device (on a
CPU the memory map is used in place: every process shares the page cache) and every epoch
draws batches by a random permutation: no per-frame Python, no DataLoader. When it
does not fit, large contiguous memmap chunks are streamed, in random order, into one fixed
device buffer (so a captured CUDA graph keeps reading the same memory).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from sdmvae_cli.core.errors import SdmvaeError, first_line


def open_frames(prepared_dir: str | Path, split: str) -> np.ndarray:
    f = Path(prepared_dir) / split / "frames.npy"
    if not f.exists():
        raise SdmvaeError(f"{prepared_dir}: split {split!r} has no frames.npy (run `sdmvae prepare`)")
    try:
        arr = np.load(f, mmap_mode="c")  # copy-on-write: writable to torch, never written back
    except (ValueError, OSError, EOFError) as exc:  # truncated, not .npy, pickled objects
        raise SdmvaeError(f"{f}: unreadable prepared frames ({first_line(exc, 120)}); re-run `sdmvae prepare --force`") from None
    if arr.ndim != 2 or arr.dtype != np.float32:
        raise SdmvaeError(f"{f}: expected a float32 (frames x bins) array, got {arr.dtype} {arr.shape}")
    if arr.shape[0] == 0:
        raise SdmvaeError(f"{f}: no frames")
    return arr


#: the frames files this process has checked, as (path, inode, size, mtime): a file is read
#: through once per process, however many times it is opened (a distributed sweep's rank 0
#: checks every member before it writes, then trains its share with the same checks)
_CHECKED: set[tuple] = set()


def _identity(frames) -> tuple | None:
    name = getattr(frames, "filename", None)
    try:
        st = os.stat(name) if name else None
    except OSError:
        return None
    return (str(name), st.st_ino, st.st_size, st.st_mtime_ns) if st else None


def check_frames(frames, where: str, chunk: int = 65536) -> None:
    """Power frames must be finite and non-negative: a NaN in the data would surface epochs
    later as a diverged loss and be blamed on the learning rate. One vectorised pass, once per
    file version and process (a memory map is known by its file; an array in memory, always)."""
    ident = _identity(frames)
    if ident is not None and ident in _CHECKED:
        return
    _check_values(frames, where, chunk)
    if ident is not None:
        _CHECKED.add(ident)


def _check_values(frames, where: str, chunk: int) -> None:
    for s in range(0, frames.shape[0], chunk):
        block = np.asarray(frames[s : s + chunk])
        ok = np.isfinite(block).all(axis=1) & (block >= 0).all(axis=1)
        if not ok.all():
            bad = s + int(np.argmin(ok))
            kind = "NaN or inf" if not np.isfinite(block[bad - s]).all() else "negative power"
            raise SdmvaeError(
                f"{where}: the prepared frames hold {kind} (frame {bad}); the data is corrupt, "
                "not the training: re-run `sdmvae prepare --force`"
            )


def gather_rows(frames: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows ``idx`` (any shape) of ``frames`` (F, bins): (*idx.shape, bins), by one
    ``index_select`` on the flattened indices and a view (a CPU gather 2-5x faster than
    ``frames[idx]``)."""
    flat = idx.reshape(-1).to(device=frames.device, dtype=torch.int64)
    return frames.index_select(0, flat).view(*idx.shape, frames.shape[1])


@dataclass
class FrameSource:
    frames: np.ndarray  # (N, bins) memmap
    device: torch.device
    chunk_frames: int  # frames per device chunk (== N when resident)
    buffer: torch.Tensor | None = None  # (chunk_frames, bins) on the device
    #: frames per row a batch draws (a sequence source's rows are sequences: data/sequences.py)
    row_frames = 1

    @classmethod
    def create(cls, frames: np.ndarray, device: torch.device, max_device_bytes: int, min_rows: int = 1) -> "FrameSource":
        """``frames`` resident on ``device`` when they fit in ``max_device_bytes``, else streamed
        in chunks of that size, never fewer than ``min_rows`` frames (one batch)."""
        per_frame = frames.shape[1] * 4
        chunk = frames.shape[0] if frames.nbytes <= max_device_bytes else max(min_rows, max_device_bytes // per_frame)
        chunk = min(chunk, frames.shape[0])
        if chunk >= frames.shape[0] and device.type == "cpu" and isinstance(frames, np.memmap) and frames.flags.writeable:
            # resident on a CPU: the memory map itself, no copy. Why: the processes of a
            # launch (torchrun's ranks, side-by-side sweeps) share the page cache instead of
            # holding one private copy of the split each; a batch's gather costs ~10 % more
            # (50-56 against 44-53 us for 128 frames, docs/benchmarks.md), under 1 % of a step
            return cls(frames, device, chunk, torch.from_numpy(frames))
        src = cls(frames, device, chunk, torch.empty((chunk, frames.shape[1]), dtype=torch.float32, device=device))
        if src.resident:
            src.buffer.copy_(torch.from_numpy(np.array(frames, dtype=np.float32)))
        return src

    @property
    def resident(self) -> bool:
        return self.chunk_frames >= self.frames.shape[0]

    def __len__(self) -> int:
        return self.frames.shape[0]

    def gather(self, idx: torch.Tensor) -> torch.Tensor:
        """Rows ``idx`` (any shape) of the device buffer: (*idx.shape, bins)."""
        return gather_rows(self.buffer, idx)

    def chunks(self, gen: torch.Generator) -> Iterator[int]:
        """Fill ``self.buffer`` chunk by chunk (random order); yields the valid row count."""
        if self.resident:
            yield self.frames.shape[0]
            return
        n = self.frames.shape[0]
        starts = torch.arange(0, n, self.chunk_frames)
        for i in torch.randperm(len(starts), generator=gen).tolist():
            s = int(starts[i])
            rows = min(self.chunk_frames, n - s)
            self.buffer[:rows].copy_(torch.from_numpy(np.array(self.frames[s : s + rows], dtype=np.float32)))
            yield rows


def device_budget(device: torch.device, fraction: float = 0.5) -> int:
    """Bytes of frames we allow on the device: a fraction of free GPU memory, or of host RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * fraction)
    try:
        pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return int(pages * fraction)
    except (ValueError, OSError, AttributeError):
        return 4 << 30
