"""One audio file -> its power-spectrogram frames (silence trimmed), in worker processes: the
per-file work of ``sdmvae prepare`` (:mod:`sdmvae_cli.data.prepare` writes the splits)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from sdmvae_cli.audio.io import load_audio, trim_silence
from sdmvae_cli.audio.stft import StftConfig, min_samples, power_spectrogram
from sdmvae_cli.core.errors import AudioError, SdmvaeError
from sdmvae_cli.core.pool import Failure, map_ordered
from sdmvae_cli.data.keys import file_sha256


@dataclass
class FileResult:
    index: int
    frames: np.ndarray | None
    meta: dict
    error: str | None


def _process(args: tuple[int, str, str, str, dict, bool, float]) -> FileResult:
    """Worker: one file -> power frames (module level so it pickles for processes)."""
    index, utt_id, speaker, path, cfg_d, trim, top_db = args
    cfg = StftConfig.from_dict(cfg_d)
    meta = {"id": utt_id, "speaker": speaker, "path": path, "sha256": file_sha256(path)}
    try:
        audio = load_audio(path, cfg, warn_stereo=False)
    except AudioError as exc:
        return FileResult(index, None, meta, str(exc))
    x = audio.samples
    start, stop = 0, x.size
    if trim:
        x, start, stop = trim_silence(x, top_db)
        if x.size < min_samples(cfg):
            return FileResult(index, None, meta, f"{path}: nothing left after silence trimming (top_db={top_db})")
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
    return FileResult(index, power, meta, None)


def file_results(tasks: list[tuple], jobs: int) -> Iterator[FileResult]:
    if jobs > 1 and len(tasks) > 1:
        # warm up librosa (import + its numba-compiled kernels) once in the parent: forked workers
        # inherit it instead of each paying ~2 s of start-up
        trim_silence(np.random.default_rng(0).standard_normal(4096).astype(np.float32), 30.0)
    for task, result in zip(tasks, map_ordered(_process, tasks, jobs)):
        if isinstance(result, Failure):
            raise SdmvaeError(f"{task[1]}: {result.reason}")
        yield result
