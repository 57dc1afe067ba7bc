"""`sdmvae resynth`: analysis -> encode -> decode the posterior mean -> input phase -> iSTFT.

Seed paper, section 3.3: the decoded variance is the estimated power spectrogram; its square
root is used as magnitude with the phase of the input STFT, and the inverse STFT gives the
waveform. The output has the input's length, sample rate and level (the front-end's peak
normalisation and resampling are undone).

Beyond full scale: a clipped input (flat tops at +-1) has a peak of 1 but its resynthesis does
not keep the flat tops (the input phase with a smoothed magnitude), so the written waveform can
peak well above 1 (2.6x measured). Integer formats would clip it and float WAV would carry it
to players that clip, so the whole file is scaled down to peak at :data:`FULL_SCALE`, a
constant gain (no distortion), with a warning naming the file and the gain in dB. What metrics
compare (``samples_16k``) is not affected.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from sdmvae_cli.audio import AUDIO_SUFFIXES, Audio, load_audio, restore, write_audio
from sdmvae_cli.checkpoint import LoadedModel, load_model
from sdmvae_cli.errors import SdmvaeError
from sdmvae_cli.stft import StftConfig, istft, stft

log = logging.getLogger("sdmvae")

#: written peaks above this are scaled down to it (just under 1: a 16-bit or 24-bit encoder
#: maps +1.0 to one step past its largest code)
FULL_SCALE = 0.999

PowerFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


@dataclass
class Resynthesis:
    samples_16k: np.ndarray  # at the model rate, peak-normalised domain (what metrics compare)
    output: np.ndarray  # at the source rate and level: what is written
    codes: np.ndarray | None  # interpretable latent code per frame (frames, code_dim)


def released_dir() -> Path:
    """The released checkpoints: ``models/`` of the repository, shipped in the wheel as
    ``sdmvae_cli/released`` (a link to it in the source tree)."""
    return Path(str(resources.files("sdmvae_cli").joinpath("released")))


def default_model_path() -> Path:
    """The default released checkpoint, named in ``models/default.json`` (see models/README.md)."""
    index = released_dir() / "default.json"
    if not index.exists():
        raise SdmvaeError("no released model is bundled with this installation; pass --model CKPT (a best.pt from `sdmvae train`)")
    p = released_dir() / json.loads(index.read_text())["default"]
    if not p.exists():
        raise SdmvaeError(f"the default released model {p.name} is missing from this installation; pass --model CKPT")
    return p


def model_power_fn(lm: LoadedModel) -> PowerFn:
    """Power -> (decoded power of the posterior-mean code, interpretable code)."""
    model = lm.model

    def fn(power: torch.Tensor):
        return model.reconstruct(power)

    return fn


def resynthesise_audio(audio: Audio, cfg: StftConfig, power_fn: PowerFn) -> Resynthesis:
    """Resynthesise one waveform with any power -> power mapping (a model, or an oracle)."""
    x = torch.from_numpy(audio.samples)
    with torch.no_grad():
        spec = stft(x, cfg)  # (frames, bins)
        mag = spec.abs()
        power = mag.square()
        est_power, codes = power_fn(power)
        if not torch.isfinite(est_power).all():
            raise SdmvaeError("the model produced NaN/inf power (corrupt or incompatible checkpoint)")
        phase = torch.where(mag > 0, spec / mag.clamp_min(1e-30), torch.ones_like(spec))
        est = istft(est_power.sqrt() * phase, cfg, length=x.numel()).numpy()
    return Resynthesis(est, restore(est, audio, cfg), None if codes is None else codes.numpy())


def power_in_out(audio: Audio, res: Resynthesis, cfg: StftConfig) -> tuple[np.ndarray, np.ndarray]:
    """Power spectrograms (frames x bins) of the input and of its resynthesis, for plots."""
    from sdmvae_cli.stft import power_spectrogram

    with torch.no_grad():
        p_in = power_spectrogram(torch.from_numpy(audio.samples), cfg).numpy()
        p_out = power_spectrogram(torch.from_numpy(res.samples_16k), cfg).numpy()
    return p_in, p_out


def fit_full_scale(x: np.ndarray) -> tuple[np.ndarray, float]:
    """``x`` scaled by one gain so its peak is at most :data:`FULL_SCALE`; returns (signal, gain)."""
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak <= FULL_SCALE:
        return x, 1.0
    g = FULL_SCALE / peak
    return (x * g).astype(x.dtype), g


def codes_path(dst: str | Path) -> Path:
    return Path(dst).with_suffix(".codes.npz")


def resynthesise_file(src: str | Path, dst: str | Path, lm: LoadedModel, save_codes: bool = False) -> Resynthesis:
    audio = load_audio(src, lm.stft)
    res = resynthesise_audio(audio, lm.stft, model_power_fn(lm))
    out, g = fit_full_scale(res.output)
    if g < 1.0:
        log.warning("%s: the resynthesis peaks at %.2fx full scale; scaled by %.1f dB to fit", src, FULL_SCALE / g, 20 * np.log10(g))
    write_audio(dst, out, audio.source_rate)
    if save_codes and res.codes is not None:
        save_codes_npz(codes_path(dst), res.codes, lm)
    return res


def save_codes_npz(path: Path, codes: np.ndarray, lm: LoadedModel) -> None:
    from sdmvae_cli.atomic import atomic_path

    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, codes=codes.astype(np.float32), model=lm.model_config.model, hop_length=lm.stft.hop_length, sample_rate=lm.stft.sample_rate)


def plan_outputs(inp: Path, out: Path, from_list: bool = False, overwrite: bool = False, save_codes: bool = False) -> list[tuple[Path, Path]]:
    """(source, destination) pairs for a file, a directory (mirrored) or a list file, every
    destination checked before any work (no input overwritten, no existing file replaced
    without ``overwrite``, writable)."""
    from sdmvae_cli.outputs import check_dir_destination, check_files_destinations

    pairs = _pairs(Path(inp), Path(out), from_list)
    if from_list or Path(inp).is_dir():
        check_dir_destination(out, inputs=[Path(inp)] if Path(inp).is_dir() else [])
    dsts = [d for _, d in pairs] + ([codes_path(d) for _, d in pairs] if save_codes else [])
    check_files_destinations(dsts, inputs=[s for s, _ in pairs] + ([inp] if from_list else []), overwrite=overwrite)
    return pairs


def _pairs(inp: Path, out: Path, from_list: bool) -> list[tuple[Path, Path]]:
    if from_list:
        if not inp.is_file():
            raise SdmvaeError(f"file list {inp} does not exist")
        try:
            text = inp.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise SdmvaeError(f"file list {inp} is not UTF-8 text (one audio path per line)") from None
        srcs = [Path(line.strip()) for line in text.splitlines() if line.strip() and not line.startswith("#")]
        if not srcs:
            raise SdmvaeError(f"file list {inp} is empty")
        root = Path(os.path.commonpath([str(s.resolve().parent) for s in srcs]))
        return [(s, out / s.resolve().relative_to(root).with_suffix(".wav")) for s in srcs]
    if inp.is_dir():
        srcs = sorted(p for p in inp.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
        if not srcs:
            raise SdmvaeError(f"{inp}: no audio files found")
        return [(s, out / s.relative_to(inp).with_suffix(".wav")) for s in srcs]
    if not inp.exists():
        raise SdmvaeError(f"{inp}: no such file or directory")
    if out.is_dir():
        return [(inp, out / (inp.stem + ".wav"))]
    return [(inp, out)]


def resynthesise_many(
    pairs: Iterable[tuple[Path, Path]], lm: LoadedModel, save_codes: bool = False, progress: Callable[[], None] | None = None,
    raise_first: bool = False,
) -> list[tuple[Path, str]]:
    """Resynthesise every pair; returns the failures (source, one-line reason), or with
    ``raise_first`` raises the first one (one file: its error is the command's error)."""
    failures = []
    for src, dst in pairs:
        try:
            resynthesise_file(src, dst, lm, save_codes)
        except SdmvaeError as exc:
            if raise_first:
                raise
            failures.append((src, str(exc)))
        if progress:
            progress()
    return failures


def load_for_resynth(model: str | None, device: str = "cpu") -> LoadedModel:
    return load_model(model if model else default_model_path(), device=device)
