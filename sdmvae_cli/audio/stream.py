"""Long files, streamed.

Why: ``resynth`` of an hour-long recording held the whole file several times over (read,
mixed, resampled, normalised, resynthesised, restored). Streamed, it reads the file twice (the
peak normalisation gain is one number for the whole file, so it is found first) and holds a
few blocks: memory stays flat, and every sample equals what the whole-file functions above
give (tests/audio/test_long_audio.py).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from sdmvae_cli.audio.io import (
    check_finite,
    check_length,
    check_path,
    check_rate,
    full_scale_gain,
    level_gain,
    mix_down,
    output_format,
    unreadable,
    warn_scaled,
)
from sdmvae_cli.audio.stft import StftConfig
from sdmvae_cli.core.atomic import atomic_path
from sdmvae_cli.core.errors import AudioError

log = logging.getLogger("sdmvae")


#: samples per read when streaming (at the source rate)
STREAM_BLOCK = 1 << 18
#: output samples a resampling stream holds back, so its end can be cut to librosa's length
_RESAMPLE_MARGIN = 4096


@dataclass
class AudioInfo:
    """An audio file as :func:`load_audio` would see it, without its samples: what streaming it
    (:func:`stream_samples`) and undoing the front-end (:func:`restore_stream`) need."""

    path: str
    gain: float  # the peak of the mono, resampled signal: one number for the whole file
    source_rate: int
    source_channels: int
    source_length: int
    n_samples: int  # at cfg.sample_rate


def scan_audio(path: str | os.PathLike, cfg: StftConfig, *, warn_stereo: bool = True) -> AudioInfo:
    """First pass over a file: :func:`load_audio`'s checks (same messages) and its peak."""
    import soundfile as sf

    path = Path(path)
    check_path(path)
    try:
        info = sf.info(str(path))
    except Exception as exc:  # noqa: BLE001  (soundfile's long texts: one line)
        raise unreadable(path, exc) from None
    check_rate(path, info.samplerate)
    counts = {"source": 0}
    peak, n = 0.0, 0
    for block in _resampled(_mono_blocks(path, counts), info.samplerate, cfg.sample_rate):
        if block.size:
            peak = max(peak, float(np.max(np.abs(block))))
        n += block.size
    if counts["source"] == 0:
        raise AudioError(f"{path}: empty audio (0 samples)")
    if info.channels > 1 and warn_stereo:
        log.warning("%s: %d channels mixed down to mono", path, info.channels)
    gain = level_gain(path, peak, allow_silent=False)
    check_length(path, n, counts["source"], info.samplerate, cfg)
    return AudioInfo(str(path), gain, int(info.samplerate), int(info.channels), counts["source"], n)


def stream_samples(info: AudioInfo, cfg: StftConfig) -> Iterator[np.ndarray]:
    """Second pass: the front-end's samples (mono, at cfg.sample_rate, peak 1) block by block:
    together, exactly ``load_audio(path, cfg).samples``."""
    for block in _resampled(_mono_blocks(Path(info.path), {"source": 0}), info.source_rate, cfg.sample_rate):
        yield (block / info.gain).astype(np.float32)


def _mono_blocks(path: Path, counts: dict) -> Iterator[np.ndarray]:
    """The file's samples mixed to mono (float32), block by block; counts["source"] += each
    block's length; NaN/inf and read errors are one-line AudioErrors."""
    import soundfile as sf

    try:
        fh = sf.SoundFile(str(path))
    except Exception as exc:  # noqa: BLE001
        raise unreadable(path, exc) from None
    with fh:
        while True:
            try:
                data = fh.read(STREAM_BLOCK, dtype="float32", always_2d=True)
            except Exception as exc:  # noqa: BLE001  (damaged in the middle)
                raise unreadable(path, exc) from None
            if not len(data):
                return
            check_finite(path, data)
            counts["source"] += len(data)
            yield np.ascontiguousarray(mix_down(data))


def _resampled(blocks: Iterable[np.ndarray], rate_in: int, rate_out: int) -> Iterator[np.ndarray]:
    """Float32 blocks at ``rate_in`` -> ``rate_out``: together, sample for sample, what
    ``librosa.resample(res_type="soxr_hq")`` gives for the whole signal (the same soxr filter,
    run as a stream; its length ``ceil(n * rate_out / rate_in)`` too)."""
    if rate_in == rate_out:
        yield from blocks
        return
    import soxr

    stream = soxr.ResampleStream(rate_in, rate_out, 1, dtype="float32", quality="HQ")
    held, n_in, emitted = np.zeros(0, np.float32), 0, 0
    for block in blocks:
        n_in += block.size
        held = np.concatenate([held, stream.resample_chunk(block)])
        if held.size > _RESAMPLE_MARGIN:
            out, held = held[:-_RESAMPLE_MARGIN], held[-_RESAMPLE_MARGIN:]
            emitted += out.size
            yield out
    held = np.concatenate([held, stream.resample_chunk(np.zeros(0, np.float32), last=True)])
    n_out = int(np.ceil(n_in * float(rate_out) / rate_in))
    if emitted > n_out:
        raise RuntimeError(f"resampling stream overshot: {emitted} > {n_out} samples")
    yield np.pad(held[: n_out - emitted], (0, max(0, n_out - emitted - held.size)))


class SampleWindow:
    """Random access to a stream of sample blocks for readers that move forward: ``take(lo,
    hi)`` returns samples ``lo:hi``, reading on as needed and forgetting what lies before ``lo``
    (a later ``lo`` may not be smaller). Memory: the span of one request plus one block."""

    def __init__(self, blocks: Iterable[np.ndarray]):
        self._blocks = iter(blocks)
        self._buf = np.zeros(0, np.float32)
        self._start = 0  # index of self._buf[0]

    def take(self, lo: int, hi: int) -> np.ndarray:
        if lo < self._start:
            raise ValueError(f"samples {lo}:{hi} were already released (window starts at {self._start})")
        parts = [self._buf[lo - self._start :]]
        have = self._start + self._buf.size
        while have < hi:
            block = next(self._blocks, None)
            if block is None:
                break
            parts.append(block)
            have += block.size
        self._buf, self._start = np.concatenate(parts) if len(parts) > 1 else parts[0], max(lo, self._start)
        return self._buf[: hi - self._start]


def restore_stream(blocks: Iterable[np.ndarray], info: AudioInfo, cfg: StftConfig) -> Iterator[np.ndarray]:
    """:func:`restore` block by block: the source's level, rate and exact length."""
    done = 0
    for y in _resampled((b.astype(np.float32) * info.gain for b in blocks), cfg.sample_rate, info.source_rate):
        y = y[: info.source_length - done]
        done += y.size
        if y.size:
            yield y.astype(np.float32)
    if done < info.source_length:
        yield np.zeros(info.source_length - done, np.float32)


def write_stream_within_full_scale(
    dst: str | os.PathLike, blocks: Iterable[np.ndarray], rate: int, src: str | os.PathLike, what: str, subtype: str | None = None
) -> float:
    """:func:`write_within_full_scale` for a stream: the blocks go to a float WAV beside ``dst``
    as they come (their peak is known only at the end), which then becomes ``dst``: renamed, or
    copied block by block with the full-scale gain and ``dst``'s format. Returns the gain."""
    import tempfile

    import soundfile as sf

    dst = Path(dst)
    fmt, subtype = output_format(dst, subtype)  # refused before any work
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".unscaled.wav.tmp", dir=dst.parent)
    os.close(fd)
    raw = Path(name)
    try:
        peak = 0.0
        with sf.SoundFile(str(raw), "w", rate, 1, format="WAV", subtype="FLOAT") as out:
            for block in blocks:
                if block.size:
                    peak = max(peak, float(np.max(np.abs(block))))
                out.write(block)
        g = full_scale_gain(peak)
        warn_scaled(src, what, g)
        with atomic_path(dst, suffix=dst.suffix.lower() or ".wav") as tmp:
            if g == 1.0 and (fmt, subtype) == ("WAV", "FLOAT"):
                os.replace(raw, tmp)
            else:
                with sf.SoundFile(str(raw)) as inp, sf.SoundFile(str(tmp), "w", rate, 1, format=fmt, subtype=subtype) as out:
                    for block in inp.blocks(STREAM_BLOCK, dtype="float32"):
                        out.write(block if g == 1.0 else (block * g).astype(np.float32))
    finally:
        raw.unlink(missing_ok=True)
    return g
