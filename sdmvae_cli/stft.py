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
from dataclasses import asdict, dataclass
from typing import Any

import torch

from sdmvae_cli.errors import SdmvaeError, dataclass_from_dict

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
            raise SdmvaeError(f"STFT needs hop_length <= win_length <= n_fft, got {self.hop_length}, {self.win_length}, {self.n_fft}")
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
