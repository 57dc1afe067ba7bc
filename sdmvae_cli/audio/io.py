"""Audio I/O: read any soundfile-readable file into a 16 kHz mono, peak-normalised waveform.

Why peak normalisation: the authors normalise every utterance to a peak of 1 before the STFT,
so the model is trained (and must be used) at that level. The gain is remembered so
resynthesis can give back the input's original level.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sdmvae_cli.audio.stft import StftConfig, min_samples
from sdmvae_cli.core.atomic import atomic_path
from sdmvae_cli.core.errors import AudioError

log = logging.getLogger("sdmvae")


def _readable_suffixes() -> tuple[str, ...]:
    """What folder mode picks up: WAV/FLAC/OGG/AIFF, plus MP3 where this libsndfile reads it
    (1.1.0 and later)."""
    base = (".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif")
    try:
        import soundfile as sf

        return base + ((".mp3",) if "MP3" in sf.available_formats() else ())
    except Exception:  # noqa: BLE001  (no libsndfile: loading fails later with its own message)
        return base


AUDIO_SUFFIXES = _readable_suffixes()
#: sample formats a written file may take (``--subtype``); None: the format's usual one
SUBTYPES = ("PCM_16", "PCM_24", "FLOAT")
#: Peak below this (about -120 dBFS) is treated as digital silence.
SILENCE_PEAK = 1e-6
#: Source rates outside this range are refused: speech below 4 kHz has no usable band, and a
#: bogus header rate (1 Hz) would make resampling to 16 kHz allocate gigabytes.
MIN_RATE, MAX_RATE = 4000, 768000


@dataclass
class Audio:
    """A waveform ready for analysis, plus what is needed to undo the front-end."""

    samples: np.ndarray  # float32, mono, at cfg.sample_rate, peak 1.0
    gain: float  # original peak: samples * gain is the input level
    source_rate: int
    source_channels: int
    source_length: int  # samples at the source rate

    @property
    def seconds(self) -> float:
        return self.source_length / self.source_rate


def read_raw(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """(frames, channels) float32 and the sample rate; one-line errors for missing/corrupt files."""
    import soundfile as sf

    path = Path(path)
    check_path(path)
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError/RuntimeError with long texts
        raise unreadable(path, exc) from None
    return data, int(rate)


def check_path(path: Path) -> None:
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    if path.is_dir():
        raise AudioError(f"{path}: is a directory, expected an audio file")


def unreadable(path: Path, exc: Exception) -> AudioError:
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return AudioError(f"{path}: cannot read audio ({msg})")


def load_audio(path: str | os.PathLike, cfg: StftConfig, *, warn_stereo: bool = True, allow_silent: bool = False) -> Audio:
    """Read, mix down, resample to ``cfg.sample_rate`` and peak-normalise one file.

    ``allow_silent`` (for estimates being scored: a model that outputs silence must get its bad
    score, not be left out) returns digital silence unnormalised instead of raising.
    """
    data, rate = read_raw(path)
    return prepare_samples(data, rate, cfg, name=str(path), warn_stereo=warn_stereo, allow_silent=allow_silent)


def prepare_samples(
    data: np.ndarray, rate: int, cfg: StftConfig, *, name: str = "audio", warn_stereo: bool = True, allow_silent: bool = False
) -> Audio:
    """The front-end of :func:`load_audio` on a waveform in memory: (samples,) or
    (samples, channels), any float or int dtype."""
    path = name
    data = np.asarray(data)
    if data.ndim == 1:
        data = data[:, None]
    if data.ndim != 2:
        raise AudioError(f"{path}: expected a 1-D waveform or (samples, channels), got shape {data.shape}")
    if np.issubdtype(data.dtype, np.integer):
        data = data.astype(np.float32) / float(np.iinfo(data.dtype).max)
    data = data.astype(np.float32, copy=False)
    check_rate(path, rate)
    n_src, channels = data.shape
    if n_src == 0:
        raise AudioError(f"{path}: empty audio (0 samples)")
    check_finite(path, data)
    if channels > 1 and warn_stereo:
        log.warning("%s: %d channels mixed down to mono", path, channels)
    mono = mix_down(data)
    if rate != cfg.sample_rate:
        import librosa

        mono = librosa.resample(mono, orig_sr=rate, target_sr=cfg.sample_rate, res_type="soxr_hq").astype(np.float32)
    peak = level_gain(path, float(np.max(np.abs(mono))) if mono.size else 0.0, allow_silent)
    check_length(path, mono.size, n_src, rate, cfg)
    return Audio(
        samples=(mono / peak).astype(np.float32),
        gain=peak,
        source_rate=rate,
        source_channels=channels,
        source_length=n_src,
    )


def check_rate(path, rate: int) -> None:
    if not MIN_RATE <= rate <= MAX_RATE:
        raise AudioError(f"{path}: unsupported sample rate {rate} Hz (expected {MIN_RATE} to {MAX_RATE} Hz)")


def check_finite(path, data: np.ndarray) -> None:
    if not np.isfinite(data).all():
        raise AudioError(f"{path}: audio contains NaN or infinite samples")


def mix_down(data: np.ndarray) -> np.ndarray:
    """(samples, channels) -> mono: the channels' mean (row by row, so a block gives the same)."""
    return data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]


def level_gain(path, peak: float, allow_silent: bool) -> float:
    """The normalisation gain: the peak, unless the audio is digital silence."""
    if peak < SILENCE_PEAK:
        if not allow_silent:
            raise AudioError(f"{path}: audio is silent (peak {peak:.2g})")
        return 1.0
    return peak


def check_length(path, n: int, n_src: int, rate: int, cfg: StftConfig) -> None:
    """Refuse audio the STFT cannot analyse; the counts are in samples at the analysis rate, since
    the shortest and the longest refused lengths differ by one sample (0.06 ms at 16 kHz)."""
    need = min_samples(cfg)
    if n < need:
        raise AudioError(
            f"{path}: too short ({n} samples at {cfg.sample_rate} Hz, {n_src / rate * 1e3:.1f} ms); "
            f"need at least {need} ({need / cfg.sample_rate * 1e3:.1f} ms)"
        )


def restore(samples: np.ndarray, audio: Audio, cfg: StftConfig) -> np.ndarray:
    """Undo the front-end: back to the source rate, length and level."""
    out = samples.astype(np.float32) * audio.gain
    if audio.source_rate != cfg.sample_rate:
        import librosa

        out = librosa.resample(out, orig_sr=cfg.sample_rate, target_sr=audio.source_rate, res_type="soxr_hq")
    n = audio.source_length
    if out.size >= n:
        out = out[:n]
    else:
        out = np.pad(out, (0, n - out.size))
    return out.astype(np.float32)


#: written peaks above this are scaled down to it (just under 1: a 16-bit or 24-bit encoder
#: maps +1.0 to one step past its largest code)
FULL_SCALE = 0.999


def fit_full_scale(x: np.ndarray) -> tuple[np.ndarray, float]:
    """``x`` scaled by one gain so its peak is at most :data:`FULL_SCALE`; returns (signal, gain)."""
    g = full_scale_gain(float(np.max(np.abs(x))) if x.size else 0.0)
    return (x, 1.0) if g == 1.0 else ((x * g).astype(x.dtype), g)


def full_scale_gain(peak: float) -> float:
    """The one gain that brings a signal of this peak within :data:`FULL_SCALE` (1: it is)."""
    return 1.0 if peak <= FULL_SCALE else FULL_SCALE / peak


def warn_scaled(src, what: str, g: float) -> None:
    if g < 1.0:
        log.warning("%s: the %s peaks at %.2fx full scale; scaled by %.1f dB to fit", src, what, FULL_SCALE / g, 20 * np.log10(g))


def write_within_full_scale(
    dst: str | os.PathLike, output: np.ndarray, rate: int, src: str | os.PathLike, what: str, subtype: str | None = None
) -> float:
    """Write a model's output at the input's level, scaled by one gain when it would pass full
    scale (a clipped input's resynthesis or enhancement does not keep its flat tops and can peak
    well above 1): no clipping distortion, and a warning naming the file and the gain. Returns the gain."""
    out, g = fit_full_scale(output)
    warn_scaled(src, what, g)
    write_audio(dst, out, rate, subtype=subtype)
    return g


def write_audio(path: str | os.PathLike, samples: np.ndarray, rate: int, subtype: str | None = None) -> None:
    """Write atomically (temp file + rename); the format follows the suffix (wav, flac, ogg).

    ``subtype``: PCM_16, PCM_24 or FLOAT; None keeps 32-bit float for WAV (no rounding of the
    resynthesis) and libsndfile's default (16-bit) for FLAC. FLAC holds no float samples and
    Ogg Vorbis no PCM, so those combinations are refused."""
    import soundfile as sf

    path = Path(path)
    fmt, subtype = output_format(path, subtype)
    with atomic_path(path, suffix=path.suffix.lower() or ".wav") as tmp:
        sf.write(str(tmp), samples, rate, format=fmt, subtype=subtype)


def output_format(path: Path, subtype: str | None) -> tuple[str, str | None]:
    """(soundfile format, subtype) of an output file, from its suffix and ``--subtype``; one
    clear line for a combination that cannot be written."""
    suffix = path.suffix.lower() or ".wav"
    fmt = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG"}.get(suffix)
    if fmt is None:
        raise AudioError(f"{path}: unsupported output format {suffix!r} (use .wav, .flac or .ogg)")
    if subtype is not None and subtype not in SUBTYPES:
        raise AudioError(f"unknown sample format {subtype!r}; expected one of {', '.join(SUBTYPES)}")
    if subtype is not None and fmt != "WAV" and not (fmt == "FLAC" and subtype != "FLOAT"):
        raise AudioError(f"{path}: {fmt} cannot hold {subtype} samples (FLAC: PCM_16 or PCM_24; Ogg: its own)")
    if subtype is None:
        return fmt, ("FLOAT" if fmt == "WAV" else None)
    return fmt, (None if fmt == "OGG" else subtype)


def trim_silence(samples: np.ndarray, top_db: float) -> tuple[np.ndarray, int, int]:
    """Leading/trailing silence removal (librosa ``effects.trim``, top_db=30 as the authors)."""
    import librosa

    trimmed, (start, stop) = librosa.effects.trim(samples, top_db=top_db)
    return trimmed, int(start), int(stop)
