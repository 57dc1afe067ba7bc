"""TensorBoard events of a run (``RUN/tb/``): a live view of training, never its record.

``history.csv`` stays the source of truth; the events show the same numbers while the run goes
(every epoch: the losses and their IS and KL parts, the learning rate, frames/s) and, every
``--tb-every`` epochs, one validation utterance's spectrogram above its resynthesis (the
posterior-mean code decoded, as ``sdmvae resynth`` does: seed paper, section 3.3) and the
resynthesised audio. Writing them must never cost a run: a missing ``tensorboard`` package is one
line at the start, a folder that cannot be written one line when it fails, and the run goes on.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sdmvae_cli.audio.io import fit_full_scale
from sdmvae_cli.audio.stft import StftConfig, istft, stft
from sdmvae_cli.core.errors import SdmvaeError, first_line
from sdmvae_cli.data.extract import load_utterance
from sdmvae_cli.data.prepared import read_manifest
from sdmvae_cli.nets import SpectrogramVAE
from sdmvae_cli.training.curves import LOSS_PREFIXES, loss_column
from sdmvae_cli.training.run_folder import TB_FOLDER

log = logging.getLogger("sdmvae")

#: default ``--tb-every``: epochs between two examples (spectrogram image and audio; epoch 0 is
#: one). Why 20: an example is about 150 kB of events (its audio 96 kB), so a run of 200 epochs
#: keeps 1.5 MB of them, twice its checkpoints; a sweep of 64 members 100 MB
TB_EVERY = 20
#: the example utterance's first seconds (an image of 2 x 188 frames x 513 bins, 3 s of audio)
EXAMPLE_SECONDS = 3.0
#: the spectrogram image's range below the input's loudest bin
IMAGE_DYNAMIC_DB = 80.0
#: Griffin-Lim iterations for the example's phase when its audio file cannot be read (synthetic data)
GRIFFIN_LIM_ITERS = 32
#: seconds between two writes of the event files to disk (torch's default is 120: not live)
FLUSH_SECS = 10
#: tag section of each loss term (history.csv's column is the rest of the tag): cards grouped as loss.png's panels
TERM_SECTIONS = {"total": "total", "recon": "IS", "kl": "KL"}
MISSING = "TensorBoard logs off: the tensorboard package is not installed (pip install 'sdmvae[tensorboard]'; --no-tensorboard silences this)"


def summary_writer_class() -> type | None:
    """torch's SummaryWriter, or None (said once, at the start) where tensorboard is not installed.
    A lazy import: tensorboard is an optional extra, and heavy."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning(MISSING)
        return None
    return SummaryWriter


def scalar_values(record: dict[str, Any], lr: float) -> dict[str, float]:
    """Tag -> value of one epoch: every loss column of history.csv as ``<term>/<column>``
    (``total/val_pm_total``, ``IS/train_recon``, ``KL/val_kl``; val_median under total), then
    ``optim/lr`` and ``speed/frames_per_s``."""
    out = {}
    for col, v in record.items():
        if col.startswith(LOSS_PREFIXES) and isinstance(v, (int, float)) and not isinstance(v, bool):
            term = loss_column(col)[2]
            out[f"{TERM_SECTIONS.get(term, term)}/{col}"] = float(v)
    out["optim/lr"] = float(lr)
    out["speed/frames_per_s"] = float(record["frames_per_s"])
    return out


@dataclass
class Example:
    """The validation utterance every run of a training shows: its power frames (what the model
    sees, from frames.npy), the unit-modulus phase its resynthesis takes, and its audio."""

    name: str
    power: torch.Tensor  # (frames, bins)
    phase: torch.Tensor  # (frames, bins) complex, |phase| = 1
    samples: np.ndarray  # the input at the model rate (peak-normalised, as prepare analysed it)
    stft: StftConfig

    def resynthesis(self, est_power: torch.Tensor) -> np.ndarray:
        """The waveform of a decoded power with the input's phase (as `sdmvae resynth`), within full scale."""
        with torch.no_grad():
            y = istft(est_power.sqrt() * self.phase, self.stft, self.samples.size).numpy()
        return fit_full_scale(y)[0]


def _length(frames: int, cfg: StftConfig) -> int:
    """Samples whose STFT has exactly ``frames`` frames."""
    return (frames - 1) * cfg.hop_length + (0 if cfg.center else cfg.n_fft)


def _unit(spec: torch.Tensor) -> torch.Tensor:
    mag = spec.abs()
    return torch.where(mag > 0, spec / mag.clamp_min(1e-30), torch.ones_like(spec))


def validation_example(prepared_dir: Path, val_frames: np.ndarray, cfg: StftConfig) -> Example:
    """The first validation utterance's first :data:`EXAMPLE_SECONDS` (the split's first frames
    where the manifest lists none, as synthetic data): its phase from its audio file (the
    trimmed span prepare analysed) where that can be read, else Griffin-Lim's from its power."""
    rows = _manifest(prepared_dir)
    row = rows[0] if rows else {"id": "validation frames", "frame_offset": 0, "n_frames": len(val_frames)}
    n = max(2, min(int(row["n_frames"]), 1 + int(EXAMPLE_SECONDS * cfg.sample_rate) // cfg.hop_length, len(val_frames)))
    off = int(row["frame_offset"])
    power = torch.from_numpy(np.array(val_frames[off : off + n], dtype=np.float32))
    samples = _utterance_samples(row, cfg, _length(n, cfg))
    if samples is not None:
        phase = _unit(stft(torch.from_numpy(samples), cfg))
        if phase.shape == power.shape:
            return Example(str(row["id"]), power, phase, samples, cfg)
    phase = griffin_lim_phase(power, cfg)
    samples = istft(power.sqrt() * phase, cfg, _length(n, cfg)).numpy()
    return Example(str(row["id"]), power, phase, fit_full_scale(samples)[0], cfg)


def _manifest(prepared_dir: Path) -> list[dict]:
    try:
        return [r for r in read_manifest(prepared_dir, "validation") if int(r["n_frames"]) > 1]
    except (SdmvaeError, TypeError, ValueError):
        return []


def _utterance_samples(row: dict, cfg: StftConfig, length: int) -> np.ndarray | None:
    """The utterance's samples from ``trim_start`` on, as prepare analysed them; None when its
    file is gone or unreadable (prepared on another machine)."""
    if not isinstance(row.get("path"), str):
        return None
    try:
        x = load_utterance(row["path"], cfg, row.get("start"), row.get("end")).samples  # a manifest's segment: its span
    except (SdmvaeError, OSError, TypeError, ValueError):
        return None
    start = int(row.get("trim_start") or 0)
    x = np.ascontiguousarray(x[start : start + length], dtype=np.float32)
    return x if x.size == length else None


def griffin_lim_phase(power: torch.Tensor, cfg: StftConfig, iters: int = GRIFFIN_LIM_ITERS) -> torch.Tensor:
    """A phase consistent with ``power`` (Griffin and Lim, 1984), from a fixed random start."""
    mag = power.sqrt()
    gen = torch.Generator().manual_seed(0)
    phase = torch.exp(2j * math.pi * torch.rand(power.shape, generator=gen, dtype=torch.float64)).to(torch.complex64)
    length = _length(power.shape[0], cfg)
    with torch.no_grad():
        for _ in range(iters):
            phase = _unit(stft(istft(mag * phase, cfg, length), cfg))
    return phase


def spectrogram_image(power_in: np.ndarray, power_out: np.ndarray) -> np.ndarray:
    """(bins, 2 x frames + 3, 3) uint8: the input's spectrogram (left) beside its resynthesis
    (right), low frequencies at the bottom, in dB over the input's top :data:`IMAGE_DYNAMIC_DB`,
    one colour scale."""
    from matplotlib import colormaps  # a dependency; imported where an image is drawn

    db = [10 * np.log10(np.maximum(p, 1e-20)) for p in (power_in, power_out)]
    top = float(db[0].max())
    norm = [np.clip((d - top + IMAGE_DYNAMIC_DB) / IMAGE_DYNAMIC_DB, 0, 1).T[::-1] for d in db]
    grid = np.concatenate([norm[0], np.ones((norm[0].shape[0], 3)), norm[1]], axis=1)
    return (colormaps["magma"](grid)[..., :3] * 255).astype(np.uint8)


class RunWriter:
    """One run's event files in ``RUN/tb/`` (opened at its first write, so a run stopped before
    its first epoch leaves no folder). Whatever fails (the folder is a file, unwritable, the
    disk full) is one warning line, and the run goes on without its events."""

    def __init__(self, run_dir: Path, writer_cls: type, name: str):
        self.folder, self.writer_cls, self.name = run_dir / TB_FOLDER, writer_cls, name
        self.writer: Any = None
        self.failed = False
        self.wrote_input = False

    def _guarded(self, write) -> None:
        if self.failed:
            return
        try:
            if self.writer is None:
                self.writer = self.writer_cls(str(self.folder), flush_secs=FLUSH_SECS)
            write(self.writer)
        except Exception as exc:  # anything: a view of the run must never end it
            self.failed = True
            log.warning(
                "%s: TensorBoard logs stop (%s); training goes on (history.csv and loss.png are unaffected)",
                self.folder,
                first_line(exc),
            )
            self.close()

    def scalars(self, epoch: int, values: dict[str, float]) -> None:
        self._guarded(lambda w: [w.add_scalar(tag, v, epoch) for tag, v in values.items()])

    def example(self, epoch: int, ex: Example, model: SpectrogramVAE) -> None:
        """The example decoded by ``model`` (the run's weights after ``epoch``): its image and audio."""

        def write(w) -> None:
            model.eval()
            with torch.no_grad():
                est = model.reconstruct(ex.power)[0].float()
            rate = ex.stft.sample_rate
            w.add_image("example/spectrogram", spectrogram_image(ex.power.numpy(), est.numpy()), epoch, dataformats="HWC")
            w.add_audio("example/resynthesis", torch.from_numpy(ex.resynthesis(est)), epoch, sample_rate=rate)
            if not self.wrote_input:  # what the example is, once per process
                w.add_text("example/about", f"{ex.name}: the input (left) and its resynthesis (right)", epoch)
                w.add_audio("example/input", torch.from_numpy(ex.samples), epoch, sample_rate=rate)
                self.wrote_input = True

        self._guarded(write)

    def close(self) -> None:
        w, self.writer = self.writer, None
        if w is not None:
            try:
                w.close()
            except Exception:  # the failure was said once already (or the run is over)
                pass
