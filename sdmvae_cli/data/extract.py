"""One utterance (a file, or a time span of one) -> its power-spectrogram frames (silence
trimmed), in worker processes: the per-file work of ``sdmvae prepare``
(:mod:`sdmvae_cli.data.prepare` writes the splits)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf
import torch

from sdmvae_cli.audio.io import Audio, check_path, load_audio, prepare_samples, trim_silence, unreadable
from sdmvae_cli.audio.stft import StftConfig, min_samples, power_spectrogram
from sdmvae_cli.core.errors import AudioError, SdmvaeError
from sdmvae_cli.core.pool import Failure, map_ordered
from sdmvae_cli.data.keys import file_sha256

#: seconds a segment may end past the end of its recording (cut there), as Kaldi's
#: extract-segments allows: segment times are rounded, and a recording's last frame with them
MAX_OVERSHOOT = 0.5


@dataclass(frozen=True)
class Task:
    """What a worker needs for one utterance (module level, so it pickles for processes)."""

    index: int
    utt_id: str
    speaker: str
    path: str
    stft: dict
    trim: bool
    top_db: float
    start: float | None = None  # seconds; None with end None: the whole file
    end: float | None = None
    hash_file: bool = True  # False: an earlier task of the split hashes this file (a recording cut in many segments)


@dataclass
class FileResult:
    index: int
    frames: np.ndarray | None
    meta: dict
    error: str | None


def _process(task: Task) -> FileResult:
    """Worker: one utterance -> power frames."""
    cfg = StftConfig.from_dict(task.stft)
    path = task.path
    meta = {"id": task.utt_id, "speaker": task.speaker, "path": path, "sha256": file_sha256(path) if task.hash_file else None}
    if task.start is not None or task.end is not None:
        meta.update(start=task.start, end=task.end)  # only for spans: a folder corpus's manifest rows stay as they were
    try:
        audio = load_utterance(path, cfg, task.start, task.end)
    except AudioError as exc:
        return FileResult(task.index, None, meta, str(exc))
    x = audio.samples
    start, stop = 0, x.size
    if task.trim:
        x, start, stop = trim_silence(x, task.top_db)
        if x.size < min_samples(cfg):
            return FileResult(task.index, None, meta, f"{path}: nothing left after silence trimming (top_db={task.top_db})")
    power = power_spectrogram(torch.from_numpy(np.ascontiguousarray(x)), cfg).numpy().astype(np.float32)
    meta.update(
        source_rate=audio.source_rate,
        channels=audio.source_channels,
        seconds=round(audio.seconds, 4),
        gain=audio.gain,
        trim_start=start,
        trim_stop=stop,
        n_frames=int(power.shape[0]),
    )
    return FileResult(task.index, power, meta, None)


def load_utterance(path: str | Path, cfg: StftConfig, start: float | None = None, end: float | None = None) -> Audio:
    """An utterance's waveform through the usual front-end (mix-down, 16 kHz, peak 1): the whole
    file, or only the span ``start``-``end`` seconds of it (a manifest's segment), read alone,
    never the whole recording, and normalised by its own peak as every utterance is."""
    if start is None and end is None:
        return load_audio(path, cfg, warn_stereo=False)
    data, rate = read_span(Path(path), start or 0.0, end)
    return prepare_samples(data, rate, cfg, name=f"{path} [{span_text(start, end)}]", warn_stereo=False)


def read_span(path: Path, start: float, end: float | None) -> tuple[np.ndarray, int]:
    """(frames, channels) float32 of ``start``-``end`` seconds of a file (``end`` None: to its
    end), and the rate; sample positions are rounded as lhotse rounds them."""
    check_path(path)
    try:
        with sf.SoundFile(str(path)) as f:
            rate, n = int(f.samplerate), int(f.frames)
            a, b = round(start * rate), n if end is None else round(end * rate)
            if b > n + MAX_OVERSHOOT * rate:
                raise AudioError(f"{path}: the segment {span_text(start, end)} ends past the end of the file ({n / rate:.3f} s)")
            b = min(b, n)
            if a >= b:
                raise AudioError(f"{path}: the segment {span_text(start, end)} holds no audio (the file lasts {n / rate:.3f} s)")
            f.seek(a)
            data = f.read(b - a, dtype="float32", always_2d=True)
    except AudioError:
        raise
    except Exception as exc:  # soundfile raises LibsndfileError/RuntimeError with long texts
        raise unreadable(path, exc) from None
    return data, rate


def span_text(start: float | None, end: float | None) -> str:
    return f"{start or 0.0:g}-{'end' if end is None else f'{end:g}'} s"


def file_results(tasks: list[Task], jobs: int) -> Iterator[FileResult]:
    if jobs > 1 and len(tasks) > 1:
        # warm up librosa (import + its numba-compiled kernels) once in the parent: forked workers
        # inherit it instead of each paying ~2 s of start-up
        trim_silence(np.random.default_rng(0).standard_normal(4096).astype(np.float32), 30.0)
    for task, result in zip(tasks, map_ordered(_process, tasks, jobs)):
        if isinstance(result, Failure):
            raise SdmvaeError(f"{task.utt_id}: {result.reason}")
        yield result
