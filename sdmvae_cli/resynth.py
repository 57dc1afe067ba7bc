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

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from sdmvae_cli.audio import FULL_SCALE, AUDIO_SUFFIXES, Audio, load_audio, restore, write_within_full_scale  # noqa: F401  (FULL_SCALE: re-exported)
from sdmvae_cli.checkpoint import LoadedModel, load_model
from sdmvae_cli.errors import SdmvaeError
from sdmvae_cli.released import default_model_path, released_dir, resolve_model  # noqa: F401  (re-exported: older imports)
from sdmvae_cli.stft import StftConfig, istft, stft


PowerFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


@dataclass
class Resynthesis:
    samples_16k: np.ndarray  # at the model rate, peak-normalised domain (what metrics compare)
    output: np.ndarray  # at the source rate and level: what is written
    codes: np.ndarray | None  # interpretable latent code per frame (frames, code_dim)


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


def codes_path(dst: str | Path) -> Path:
    return Path(dst).with_suffix(".codes.npz")


def resynthesise_file(src: str | Path, dst: str | Path, lm: LoadedModel, save_codes: bool = False, subtype: str | None = None) -> Resynthesis:
    audio = load_audio(src, lm.stft)
    res = resynthesise_audio(audio, lm.stft, model_power_fn(lm))
    write_within_full_scale(dst, res.output, audio.source_rate, src, "resynthesis", subtype)
    if save_codes and res.codes is not None:
        save_codes_npz(codes_path(dst), res.codes, lm, source=src)
    return res


def save_codes_npz(path: Path, codes: np.ndarray, lm: LoadedModel, source: str | Path | None = None) -> None:
    """codes (frames x code_dim, float32) with what decoding them back needs: the model's
    checkpoint and the source audio (whose STFT phase and level the decoded power is given)."""
    from sdmvae_cli.atomic import atomic_path

    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, codes=codes.astype(np.float32), model=lm.model_config.model, hop_length=lm.stft.hop_length,
                     sample_rate=lm.stft.sample_rate, checkpoint=str(Path(lm.path).resolve()),
                     source=str(Path(source).resolve()) if source is not None else "")


def read_codes_npz(path: str | Path) -> dict:
    """A ``.codes.npz`` written by ``resynth --save-codes`` (possibly edited: only ``codes``
    is needed to be an array of the same number of frames)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            d = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise SdmvaeError(f"{path}: no such codes file") from None
    except Exception as exc:  # noqa: BLE001  (zip/format errors of a damaged file: one line)
        raise SdmvaeError(f"{path}: not a readable .codes.npz ({type(exc).__name__})") from None
    if "codes" not in d or d["codes"].ndim != 2:
        raise SdmvaeError(f"{path}: no 2-D 'codes' array (frames x code dimension)")
    return {"codes": d["codes"].astype(np.float32), "checkpoint": str(d.get("checkpoint", "")), "source": str(d.get("source", "")),
            "model": str(d.get("model", ""))}


def codes_to_latent(lm: LoadedModel, codes: torch.Tensor) -> torch.Tensor:
    """The decoder input of an interpretable code: z = D a for SDM-VAE (eq. 4), the code
    itself for the other families (their interpretable code is the posterior-mean latent)."""
    if codes.shape[-1] != lm.model.code_dim:
        raise SdmvaeError(f"the codes have {codes.shape[-1]} dimensions but the model's code has {lm.model.code_dim}")
    if lm.model_config.model == "sdm":
        return codes @ lm.model.D.t()
    return codes


def decode_codes(codes: np.ndarray, lm: LoadedModel, audio: Audio) -> Resynthesis:
    """Decode (possibly edited) codes to a waveform: decoded power, the phase of ``audio``'s
    STFT (the source the codes came from), inverse STFT, the source's rate and level."""
    cfg = lm.stft
    x = torch.from_numpy(audio.samples)
    with torch.no_grad():
        spec = stft(x, cfg)
        if spec.shape[0] != codes.shape[0]:
            raise SdmvaeError(f"the codes have {codes.shape[0]} frames but the source audio has {spec.shape[0]}: not its codes")
        c = torch.from_numpy(np.ascontiguousarray(codes, dtype=np.float32))
        power = torch.exp(lm.model.decode(codes_to_latent(lm, c)))
        if not torch.isfinite(power).all():
            raise SdmvaeError("the decoded power is NaN/inf (codes far outside what the model was trained on)")
        mag = spec.abs()
        phase = torch.where(mag > 0, spec / mag.clamp_min(1e-30), torch.ones_like(spec))
        est = istft(power.sqrt() * phase, cfg, length=x.numel()).numpy()
    return Resynthesis(est, restore(est, audio, cfg), codes)


def resynthesise_from_codes(codes_file: str | Path, dst: str | Path, model: str | None = None, source: str | Path | None = None,
                            subtype: str | None = None) -> Resynthesis:
    """``resynth --from-codes``: the model is ``model``, else the checkpoint recorded in the
    file, else the released default; the phase source is ``source``, else the recorded one."""
    d = read_codes_npz(codes_file)
    if model is None and d["checkpoint"] and Path(d["checkpoint"]).exists():
        model = d["checkpoint"]
    lm = load_for_resynth(model)
    src = source or d["source"]
    if not src:
        raise SdmvaeError(f"{codes_file}: no source audio recorded; give it with --phase-from IN.wav")
    audio = load_audio(src, lm.stft)
    res = decode_codes(d["codes"], lm, audio)
    write_within_full_scale(dst, res.output, audio.source_rate, codes_file, "resynthesis", subtype)
    return res


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
    raise_first: bool = False, subtype: str | None = None, jobs: int = 1,
) -> list[tuple[Path, str]]:
    """Resynthesise every pair; returns the failures (source, one-line reason), or with
    ``raise_first`` raises the first one (one file: its error is the command's error).
    ``jobs`` > 1: that many worker processes (CPU only), each with one thread."""
    pairs = list(pairs)
    if jobs > 1 and len(pairs) > 1 and next(lm.model.parameters()).device.type == "cpu" and not raise_first:
        return _resynthesise_parallel(pairs, lm, save_codes, progress, subtype, jobs)
    failures = []
    for src, dst in pairs:
        try:
            resynthesise_file(src, dst, lm, save_codes, subtype)
        except SdmvaeError as exc:
            if raise_first:
                raise
            failures.append((src, str(exc)))
        if progress:
            progress()
    return failures


_POOL: dict = {}


def _pool_init(lm: LoadedModel, save_codes: bool, subtype: str | None) -> None:
    from sdmvae_cli.workers import single_threaded_worker

    single_threaded_worker()
    _POOL.update(lm=lm, save_codes=save_codes, subtype=subtype)


def _pool_one(pair: tuple[Path, Path]) -> tuple[Path, str | None]:
    try:
        resynthesise_file(pair[0], pair[1], _POOL["lm"], _POOL["save_codes"], _POOL["subtype"])
        return pair[0], None
    except SdmvaeError as exc:
        return pair[0], str(exc)


def _resynthesise_parallel(pairs, lm, save_codes, progress, subtype, jobs) -> list[tuple[Path, str]]:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    failures = []
    with ProcessPoolExecutor(min(jobs, len(pairs)), mp_context=mp.get_context("fork"), initializer=_pool_init,
                             initargs=(lm, save_codes, subtype)) as ex:
        for src, why in ex.map(_pool_one, pairs):
            if why is not None:
                failures.append((src, why))
            if progress:
                progress()
    return failures


def load_for_resynth(model: str | None, device: str = "cpu") -> LoadedModel:
    """``--model``: a checkpoint, run directory or released name; None: the released default."""
    return load_model(resolve_model(model), device=device)


def resynthesise(audio: str | Path | np.ndarray, model: str | LoadedModel | None = None, sample_rate: int | None = None,
                 device: str = "cpu") -> Resynthesis:
    """One call from Python: a file (or a waveform with its ``sample_rate``) through a model
    (a checkpoint, run directory, released name such as ``"vae-m64"``, a :class:`LoadedModel`,
    or None for the released default). Returns :class:`Resynthesis`: ``.output`` at the input's
    rate, length and level, ``.codes`` (frames x code dimension)."""
    from sdmvae_cli.audio import prepare_samples

    lm = model if isinstance(model, LoadedModel) else load_for_resynth(model, device=device)
    if isinstance(audio, np.ndarray):
        if sample_rate is None:
            raise SdmvaeError("a waveform needs its sample_rate")
        a = prepare_samples(audio, sample_rate, lm.stft)
    else:
        a = load_audio(audio, lm.stft)
    return resynthesise_audio(a, lm.stft, model_power_fn(lm))
