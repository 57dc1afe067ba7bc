"""The audio front-end: ONE source of truth for the STFT used everywhere.

The paper (section 4.1) uses 64 ms frames at 16 kHz (1024 samples), a sine window, 75 %
overlap (hop 256) and no zero-padding (n_fft = 1024, so 513 frequency bins). Prepare, train,
resynth and evaluate all take their parameters from :class:`StftConfig`, which is stored in
``prepare.json`` and inside every checkpoint so a checkpoint alone can be used.

Padding convention: ``center=True`` with reflect padding (as the authors' data loader, which
follows librosa). With the sine window at 75 % overlap the squared windows sum to a constant
(2.0), so ``istft(stft(x), length=len(x))`` reconstructs ``x`` to float precision.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

import numpy as np
import torch

from sdmvae_cli.core.errors import SdmvaeError, dataclass_from_dict


@dataclass(frozen=True)
class StftConfig:
    sample_rate: int = 16000
    win_length: int = 1024
    hop_length: int = 256
    n_fft: int = 1024
    window: str = "sine"
    center: bool = True
    pad_mode: str = "reflect"

    def __post_init__(self) -> None:
        """A config read from a file (a checkpoint, prepare.json) is checked where it is built,
        so a damaged one is one clear line, not an error inside torch.stft."""
        for name in ("sample_rate", "win_length", "hop_length", "n_fft"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise SdmvaeError(f"STFT {name} must be a positive integer, got {v!r}")
        if not self.hop_length <= self.win_length <= self.n_fft:
            raise SdmvaeError(
                f"STFT needs hop_length <= win_length <= n_fft, got {self.hop_length}, {self.win_length}, {self.n_fft}"
            )
        if self.window not in ("sine", "hann"):
            raise SdmvaeError(f"unknown STFT window {self.window!r} (expected sine or hann)")
        if not isinstance(self.center, bool) or self.pad_mode not in ("reflect", "constant", "replicate", "circular"):
            raise SdmvaeError(f"bad STFT padding: center={self.center!r}, pad_mode={self.pad_mode!r}")

    @property
    def n_bins(self) -> int:
        return self.n_fft // 2 + 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StftConfig":
        return dataclass_from_dict(cls, d, "STFT", ignore_unknown=True)

    def window_tensor(self, device: torch.device | str | None = None, dtype=torch.float32) -> torch.Tensor:
        return make_window(self.window, self.win_length, device=device, dtype=dtype)

    def n_frames(self, n_samples: int) -> int:
        """Frames produced by :func:`stft` for a signal of ``n_samples`` samples."""
        return 1 + n_samples // self.hop_length if self.center else 1 + (n_samples - self.n_fft) // self.hop_length


def make_window(name: str, length: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Analysis/synthesis window. ``sine``: w[n] = sin(pi (n + 1/2) / N) (the paper's window)."""
    if name == "sine":
        n = torch.arange(length, device=device, dtype=torch.float64)
        return torch.sin(math.pi * (n + 0.5) / length).to(dtype)
    if name == "hann":
        return torch.hann_window(length, periodic=True, device=device, dtype=dtype)
    raise ValueError(f"unknown window {name!r} (expected 'sine' or 'hann')")


def min_samples(cfg: StftConfig) -> int:
    """Shortest signal we analyse: reflect padding needs more than n_fft // 2 samples."""
    return cfg.n_fft // 2 + 1


def stft(x: torch.Tensor, cfg: StftConfig) -> torch.Tensor:
    """Complex STFT of ``x`` (..., samples) -> (..., frames, bins). Batched, CPU or GPU."""
    lead = x.shape[:-1]
    flat = x.reshape(-1, x.shape[-1])
    spec = torch.stft(
        flat,
        n_fft=cfg.n_fft,
        hop_length=cfg.hop_length,
        win_length=cfg.win_length,
        window=cfg.window_tensor(x.device, x.dtype if x.dtype.is_floating_point else torch.float32),
        center=cfg.center,
        pad_mode=cfg.pad_mode,
        return_complex=True,
    )  # (batch, bins, frames)
    spec = spec.transpose(-1, -2)
    return spec.reshape(*lead, *spec.shape[-2:])


def istft(spec: torch.Tensor, cfg: StftConfig, length: int) -> torch.Tensor:
    """Inverse of :func:`stft`: (..., frames, bins) complex -> (..., length) real."""
    lead = spec.shape[:-2]
    flat = spec.reshape(-1, *spec.shape[-2:]).transpose(-1, -2)
    real_dtype = torch.float64 if flat.dtype == torch.complex128 else torch.float32
    x = torch.istft(
        flat,
        n_fft=cfg.n_fft,
        hop_length=cfg.hop_length,
        win_length=cfg.win_length,
        window=cfg.window_tensor(flat.device, real_dtype),
        center=cfg.center,
        length=length,
    )
    return x.reshape(*lead, length)


def power_spectrogram(x: torch.Tensor, cfg: StftConfig) -> torch.Tensor:
    """|STFT|^2, (..., frames, bins): the data every model is trained on."""
    return stft(x, cfg).abs().square()


# -- long signals in blocks -------------------------------------------------------------------
# Why: the whole-file spectrogram of a long recording costs ~110 MB per minute of audio (complex
# STFT, its magnitude, the model's output, the phase, ...), so an hour needed 7 GB. Frames are
# independent until the inverse STFT overlap-adds them, so a file can be processed in blocks of
# frames, each with the few neighbouring frames whose windows reach into its samples: the
# output equals the whole-file output to float precision, and memory no longer grows with the
# file (tests/audio/test_long_audio.py).

#: frames per block (16 s at hop 256 and 16 kHz): utterances fit in one block, processed exactly
#: as the whole-file STFT; longer files are cut, at about 8 MB of complex STFT per block
BLOCK_FRAMES = 1024


@dataclass(frozen=True)
class FrameBlock:
    """Frames ``first:stop`` are computed; those of ``core_first:core_stop`` own the output
    samples ``out_start:out_stop`` (the others are context, whose windows overlap them)."""

    first: int
    stop: int
    core_first: int
    core_stop: int
    out_start: int
    out_stop: int
    whole: bool  # one block for the whole signal: the plain stft / istft, bit for bit


def context_frames(cfg: StftConfig) -> int:
    """Neighbouring frames on each side whose windows reach into a block's own samples."""
    return -(-cfg.n_fft // (2 * cfg.hop_length))


def frame_blocks(n_samples: int, cfg: StftConfig, block_frames: int = BLOCK_FRAMES) -> list[FrameBlock]:
    """The blocks that cover a signal of ``n_samples``. ``center=False`` (no released model
    uses it) is one whole block: its first and last samples are outside every block's core."""
    n_frames = cfg.n_frames(n_samples)
    if not cfg.center or block_frames >= n_frames:
        return [FrameBlock(0, n_frames, 0, n_frames, 0, n_samples, True)]
    if block_frames < 1:
        raise ValueError(f"block_frames must be positive, got {block_frames}")
    ctx, hop = context_frames(cfg), cfg.hop_length
    return [
        FrameBlock(
            max(0, a - ctx),
            min(n_frames, a + block_frames + ctx),
            a,
            min(n_frames, a + block_frames),
            a * hop,
            min((a + block_frames) * hop, n_samples),
            False,
        )
        for a in range(0, n_frames, block_frames)
    ]


def padded_indices(block: FrameBlock, n_samples: int, cfg: StftConfig) -> np.ndarray:
    """For each sample of the block's stretch of the padded signal (what its frames see), the
    index of the original sample it is (-1: a zero of ``constant`` padding), as torch.stft's
    ``center`` padding makes it: reflect, replicate, circular or constant."""
    pad = cfg.n_fft // 2
    j = np.arange(block.first * cfg.hop_length, (block.stop - 1) * cfg.hop_length + cfg.n_fft, dtype=np.int64) - pad
    last = n_samples - 1
    if cfg.pad_mode == "reflect":
        j = np.abs(j)
        return np.where(j > last, 2 * last - j, j)
    if cfg.pad_mode == "replicate":
        return np.clip(j, 0, last)
    if cfg.pad_mode == "circular":
        return np.mod(j, n_samples)
    return np.where((j < 0) | (j > last), -1, j)


def block_stft(take: Callable[[int, int], np.ndarray], block: FrameBlock, n_samples: int, cfg: StftConfig) -> torch.Tensor:
    """Complex STFT (frames, bins) of frames ``block.first:block.stop``: the same numbers as
    those rows of the whole signal's :func:`stft`. ``take(lo, hi)`` returns the original
    samples ``lo:hi`` (float32); successive blocks ask for non-decreasing ``lo`` (except with
    circular padding), so a stream can serve them."""
    if block.whole:
        return stft(torch.from_numpy(np.ascontiguousarray(take(0, n_samples))), cfg)
    idx = padded_indices(block, n_samples, cfg)
    used = idx[idx >= 0]
    lo = int(used.min())
    seg = np.asarray(take(lo, int(used.max()) + 1), dtype=np.float32)
    x = np.where(idx >= 0, seg[np.maximum(idx - lo, 0)], np.float32(0)).astype(np.float32)
    return stft(torch.from_numpy(x), replace(cfg, center=False))


def block_istft(spec: torch.Tensor, block: FrameBlock, cfg: StftConfig) -> torch.Tensor:
    """Output samples ``block.out_start:block.out_stop`` from the (modified) STFT of the block's
    frames, as :func:`istft` of the whole spectrogram gives them: the block's own samples get
    every overlapping frame, the edges (divided by an incomplete window sum) are cut off."""
    if block.whole:
        return istft(spec, cfg, length=block.out_stop)
    y = istft(spec, cfg, length=block.out_stop - block.first * cfg.hop_length)  # starts at sample first * hop
    return y[block.out_start - block.first * cfg.hop_length :]
