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

Long files: the spectrogram is processed in blocks of frames (:data:`BLOCK_FRAMES`, with the
neighbouring frames whose windows overlap each block; :func:`sdmvae_cli.audio.stft.frame_blocks`),
so memory does not grow with the file's length beyond its waveform, and ``resynth`` of a file
streams it (two reads: the peak normalisation gain first, then the blocks) so not even that.
The output equals the whole-file computation to float precision (tests/audio/test_long_audio.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from sdmvae_cli.audio.io import AUDIO_SUFFIXES, FULL_SCALE, Audio, load_audio, prepare_samples, restore, write_within_full_scale  # noqa: F401  (FULL_SCALE: re-exported)
from sdmvae_cli.audio.stft import BLOCK_FRAMES, StftConfig, block_istft, block_stft, frame_blocks, power_spectrogram
from sdmvae_cli.audio.stream import SampleWindow, restore_stream, scan_audio, stream_samples, write_stream_within_full_scale
from sdmvae_cli.core.atomic import atomic_path
from sdmvae_cli.core.errors import SdmvaeError
from sdmvae_cli.core.outputs import check_dir_destination, check_file_destination, check_files_destinations
from sdmvae_cli.core.pool import Failure, imap_unordered
from sdmvae_cli.nets.checkpoint import LoadedModel, load_model
from sdmvae_cli.nets.released import default_model_path

PowerFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]
#: (power of a block's frames, which frames of the file they are) -> (power to synthesise, codes)
BlockFn = Callable[[torch.Tensor, slice], tuple[torch.Tensor, torch.Tensor | None]]


@dataclass
class Resynthesis:
    samples_16k: np.ndarray  # at the model rate, peak-normalised domain (what metrics compare)
    output: np.ndarray  # at the source rate and level: what is written
    codes: np.ndarray | None  # interpretable latent code per frame (frames, code_dim)


def model_power_fn(lm: LoadedModel) -> PowerFn:
    """Power -> (decoded power of the posterior-mean code, interpretable code); its
    ``block_frames`` is the model's (a sequence family decodes a whole utterance at once)."""
    model = lm.model

    def fn(power: torch.Tensor):
        return model.reconstruct(power)

    fn.block_frames = block_frames_of(lm)
    return fn


def block_frames_of(lm: LoadedModel) -> int:
    """Frames per resynthesis block: :data:`BLOCK_FRAMES`, or the family's own
    (:attr:`SpectrogramVAE.RESYNTH_BLOCK_FRAMES`)."""
    return lm.model.RESYNTH_BLOCK_FRAMES or BLOCK_FRAMES


def resynthesise_audio(audio: Audio, cfg: StftConfig, power_fn: PowerFn, block_frames: int | None = None) -> Resynthesis:
    """Resynthesise one waveform with any power -> power mapping (a model, or an oracle), in
    blocks of ``block_frames`` frames (default: the mapping's own ``block_frames``, else
    :data:`BLOCK_FRAMES`; an utterance is one block)."""
    block_frames = block_frames or getattr(power_fn, "block_frames", BLOCK_FRAMES)
    return _assemble(
        audio, cfg, resynth_blocks(_reader(audio.samples), audio.samples.size, cfg, _checked(power_fn), block_frames)
    )


def _checked(power_fn: PowerFn) -> BlockFn:
    """A model's power mapping as a block function, with the check that its output is usable."""

    def fn(power: torch.Tensor, frames: slice):
        est_power, codes = power_fn(power)
        if not torch.isfinite(est_power).all():
            raise SdmvaeError("the model produced NaN/inf power (corrupt or incompatible checkpoint)")
        return est_power, codes

    return fn


def _reader(x: np.ndarray) -> Callable[[int, int], np.ndarray]:
    return lambda lo, hi: x[lo:hi]


def resynth_blocks(
    take: Callable[[int, int], np.ndarray], n_samples: int, cfg: StftConfig, block_fn: BlockFn, block_frames: int = BLOCK_FRAMES
) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """STFT -> ``block_fn`` -> the input's phase -> inverse STFT, block by block: yields each
    block's output samples (model rate, peak-normalised domain) and the codes of its own frames.
    ``take(lo, hi)``: the input samples lo:hi (an array, or a :class:`SampleWindow` on a stream)."""
    for blk in frame_blocks(n_samples, cfg, block_frames):
        with torch.no_grad():
            spec = block_stft(take, blk, n_samples, cfg)  # (frames, bins)
            mag = spec.abs()
            est_power, codes = block_fn(mag.square(), slice(blk.first, blk.stop))
            phase = torch.where(mag > 0, spec / mag.clamp_min(1e-30), torch.ones_like(spec))
            y = block_istft(est_power.sqrt() * phase, blk, cfg).numpy()
        # a copy: a view would keep the model's whole output for the block alive
        yield y, None if codes is None else codes[blk.core_first - blk.first : blk.core_stop - blk.first].numpy().copy()


def _assemble(audio: Audio, cfg: StftConfig, blocks: Iterable[tuple[np.ndarray, np.ndarray | None]]) -> Resynthesis:
    """The whole :class:`Resynthesis` of an in-memory waveform from its blocks."""
    est = np.empty(audio.samples.size, dtype=np.float32)
    codes, at = [], 0
    for y, c in blocks:
        est[at : at + y.size] = y
        at += y.size
        if c is not None:
            codes.append(c)
    return Resynthesis(est, restore(est, audio, cfg), np.concatenate(codes) if codes else None)


def power_in_out(audio: Audio, res: Resynthesis, cfg: StftConfig) -> tuple[np.ndarray, np.ndarray]:
    """Power spectrograms (frames x bins) of the input and of its resynthesis, for plots."""

    with torch.no_grad():
        p_in = power_spectrogram(torch.from_numpy(audio.samples), cfg).numpy()
        p_out = power_spectrogram(torch.from_numpy(res.samples_16k), cfg).numpy()
    return p_in, p_out


def codes_path(dst: str | Path) -> Path:
    return Path(dst).with_suffix(".codes.npz")


def resynthesise_file(
    src: str | Path,
    dst: str | Path,
    lm: LoadedModel,
    save_codes: bool = False,
    subtype: str | None = None,
    block_frames: int | None = None,
) -> None:
    """``resynth`` of one file, streamed: the same samples as :func:`resynthesise_audio` of
    the whole file, written within full scale, in memory that does not grow with its length."""
    block_frames = block_frames or block_frames_of(lm)
    codes = _stream_file(src, dst, lm.stft, _checked(model_power_fn(lm)), src, subtype, block_frames, keep_codes=save_codes)
    if codes is not None:
        save_codes_npz(codes_path(dst), codes, lm, source=src)


def _stream_file(
    src: str | Path,
    dst: str | Path,
    cfg: StftConfig,
    block_fn: BlockFn,
    named: str | Path,
    subtype: str | None,
    block_frames: int = BLOCK_FRAMES,
    n_frames: int | None = None,
    keep_codes: bool = False,
) -> np.ndarray | None:
    """``src`` -> blocks -> ``dst`` at the source's rate, length and level, never holding the
    file: a first pass finds the peak normalisation gain, the second streams. With
    ``keep_codes`` returns the codes (frames x code dimension: ~1 MB per minute of audio).
    ``n_frames``: the frame count the caller's codes have (checked before anything is written)."""
    info = scan_audio(src, cfg)
    if n_frames is not None and n_frames != cfg.n_frames(info.n_samples):
        raise SdmvaeError(
            f"the codes have {n_frames} frames but the source audio has {cfg.n_frames(info.n_samples)}: not its codes"
        )
    kept: dict[str, np.ndarray] = {}

    def samples() -> Iterator[np.ndarray]:
        window, at = SampleWindow(stream_samples(info, cfg)), 0
        for y, c in resynth_blocks(window.take, info.n_samples, cfg, block_fn, block_frames):
            if keep_codes and c is not None:
                if not kept:  # one array for all frames: no list of blocks to concatenate (twice the memory)
                    kept["codes"] = np.empty((cfg.n_frames(info.n_samples), c.shape[1]), dtype=np.float32)
                kept["codes"][at : at + len(c)] = c
                at += len(c)
            yield y

    write_stream_within_full_scale(dst, restore_stream(samples(), info, cfg), info.source_rate, named, "resynthesis", subtype)
    return kept.get("codes")


def save_codes_npz(path: Path, codes: np.ndarray, lm: LoadedModel, source: str | Path | None = None) -> None:
    """codes (frames x code_dim, float32) with what decoding them back needs: the model's
    checkpoint and the source audio (whose STFT phase and level the decoded power is given)."""

    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                codes=np.asarray(codes, dtype=np.float32),
                model=lm.model_config.model,
                hop_length=lm.stft.hop_length,
                sample_rate=lm.stft.sample_rate,
                checkpoint=str(Path(lm.path).resolve()),
                source=str(Path(source).resolve()) if source is not None else "",
            )


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
    if "codes" not in d or d["codes"].ndim != 2 or d["codes"].shape[0] == 0:
        raise SdmvaeError(f"{path}: no 2-D 'codes' array with at least one frame (frames x code dimension)")
    if d["codes"].dtype.kind not in "iuf":  # strings, complex, bools: not codes
        raise SdmvaeError(f"{path}: 'codes' must be real numbers, got {d['codes'].dtype}")
    return {
        "codes": d["codes"].astype(np.float32),
        "checkpoint": str(d.get("checkpoint", "")),
        "source": str(d.get("source", "")),
        "model": str(d.get("model", "")),
    }


def codes_to_latent(lm: LoadedModel, codes: torch.Tensor) -> torch.Tensor:
    """The decoder input of an interpretable code (the family's hook: z = D a for SDM-VAE,
    eq. 4; the code itself for the others), after checking its size."""
    if codes.shape[-1] != lm.model.code_dim:
        raise SdmvaeError(f"the codes have {codes.shape[-1]} dimensions but the model's code has {lm.model.code_dim}")
    return lm.model.codes_to_latent(codes)


def decode_codes(codes: np.ndarray, lm: LoadedModel, audio: Audio, block_frames: int | None = None) -> Resynthesis:
    """Decode (possibly edited) codes to a waveform: decoded power, the phase of ``audio``'s
    STFT (the source the codes came from), inverse STFT, the source's rate and level. Blocks
    are the model's, as in resynthesis (a sequence family: a whole utterance, one sequence)."""
    block_frames = block_frames or block_frames_of(lm)
    n_frames = lm.stft.n_frames(audio.samples.size)
    if n_frames != codes.shape[0]:
        raise SdmvaeError(f"the codes have {codes.shape[0]} frames but the source audio has {n_frames}: not its codes")
    res = _assemble(
        audio, lm.stft, resynth_blocks(_reader(audio.samples), audio.samples.size, lm.stft, _decoder(codes, lm), block_frames)
    )
    return Resynthesis(res.samples_16k, res.output, codes)


def _decoder(codes: np.ndarray, lm: LoadedModel) -> BlockFn:
    """The block function of ``--from-codes``: the decoded power of the block's frames' codes."""

    def fn(power: torch.Tensor, frames: slice):
        c = torch.from_numpy(np.ascontiguousarray(codes[frames], dtype=np.float32))
        decoded = torch.exp(lm.model.decode(codes_to_latent(lm, c)))
        if not torch.isfinite(decoded).all():
            raise SdmvaeError("the decoded power is NaN/inf (codes far outside what the model was trained on)")
        return decoded, None

    return fn


def resynthesise_from_codes(
    codes_file: str | Path,
    dst: str | Path,
    model: str | None = None,
    source: str | Path | None = None,
    subtype: str | None = None,
    overwrite: bool = False,
) -> None:
    """``resynth --from-codes``: the model is ``model``, else the checkpoint recorded in the
    file (missing: an error), else (none recorded) the released default; the phase source is ``source``, else the recorded one.
    Streamed, like :func:`resynthesise_file`."""
    d = read_codes_npz(codes_file)
    if model is None and d["checkpoint"]:
        if not Path(d["checkpoint"]).exists():
            raise SdmvaeError(f"{codes_file} was made with {d['checkpoint']}, which is not here: give the model with -m")
        model = d["checkpoint"]
    src = source or d["source"]
    if not src:
        raise SdmvaeError(f"{codes_file}: no source audio recorded; give it with --phase-from IN.wav")
    # every file read is an input: the codes, the phase source (recorded or given), the model
    check_file_destination(dst, inputs=[codes_file, src, *([model] if model else [])], overwrite=overwrite)
    lm = load_for_resynth(model)
    # a code of another dimension, or a family whose codes do not determine its output: one line, before any work
    codes_to_latent(lm, torch.from_numpy(d["codes"][:1]))
    frames = d["codes"].shape[0]
    _stream_file(src, dst, lm.stft, _decoder(d["codes"], lm), codes_file, subtype, block_frames_of(lm), n_frames=frames)


def plan_outputs(
    inp: Path, out: Path, from_list: bool = False, overwrite: bool = False, save_codes: bool = False
) -> list[tuple[Path, Path]]:
    """(source, destination) pairs for a file, a directory (mirrored) or a list file, every
    destination checked before any work (no input overwritten, no existing file replaced
    without ``overwrite``, writable)."""

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
    pairs: Iterable[tuple[Path, Path]],
    lm: LoadedModel,
    save_codes: bool = False,
    progress: Callable[[], None] | None = None,
    raise_first: bool = False,
    subtype: str | None = None,
    jobs: int = 1,
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
    _POOL.update(lm=lm, save_codes=save_codes, subtype=subtype)


def _pool_one(pair: tuple[Path, Path]) -> tuple[Path, str | None]:
    try:
        resynthesise_file(pair[0], pair[1], _POOL["lm"], _POOL["save_codes"], _POOL["subtype"])
        return pair[0], None
    except SdmvaeError as exc:
        return pair[0], str(exc)


def _resynthesise_parallel(pairs, lm, save_codes, progress, subtype, jobs) -> list[tuple[Path, str]]:
    failures = []
    for i, result in imap_unordered(_pool_one, enumerate(pairs), jobs, _pool_init, (lm, save_codes, subtype)):
        why = result.reason if isinstance(result, Failure) else result[1]
        if why is not None:
            failures.append((pairs[i][0], why))
        if progress:
            progress()
    return failures


def load_for_resynth(model: str | None, device: str = "cpu") -> LoadedModel:
    """``--model``: a checkpoint, run directory or released name; None: the released default."""
    return load_model(default_model_path() if model is None else model, device=device)


def resynthesise(
    audio: str | Path | np.ndarray, model: str | LoadedModel | None = None, sample_rate: int | None = None, device: str = "cpu"
) -> Resynthesis:
    """One call from Python: a file (or a waveform with its ``sample_rate``) through a model
    (a checkpoint, run directory, released name such as ``"vae-m64"``, a :class:`LoadedModel`,
    or None for the released default). Returns :class:`Resynthesis`: ``.output`` at the input's
    rate, length and level, ``.codes`` (frames x code dimension)."""

    lm = model if isinstance(model, LoadedModel) else load_for_resynth(model, device=device)
    if isinstance(audio, np.ndarray):
        if sample_rate is None:
            raise SdmvaeError("a waveform needs its sample_rate")
        a = prepare_samples(audio, sample_rate, lm.stft)
    else:
        a = load_audio(audio, lm.stft)
    return resynthesise_audio(a, lm.stft, model_power_fn(lm))
