"""Noisy test sets from clean speech (`sdmvae mix`): a folder ready for `enhance` and `evaluate --ref`.

For every clean file and every asked SNR one mixture ``noisy = clean + g * noise`` is written,
with ``g`` chosen so that the SNR over the whole file, ``10 log10(sum clean^2 / sum (g noise)^2)``,
is the asked one (measured again on the samples as written: float WAV, so it holds to far
better than 0.01 dB). A mixture that would pass full scale is scaled down, and its clean
reference by the same gain, so the SNR is kept and the pair still scores what it should. The
noise of one clean file is the same segment at every SNR (only its level changes), drawn from
``--seed`` and the file's relative path (adding files does not change the others' noise).

Noise: a file or a folder of files (one drawn per clean file, looped or cropped from a random
offset to the clean file's length, resampled to its rate), or a generated one: ``white``,
``pink`` (1/f power), ``brown`` (1/f^2), or ``babble``: the sum of up to :data:`BABBLE_TALKERS`
OTHER utterances of CLEAN (other speakers' folders when there are any), each at the same RMS.
A bare word that is a generated noise's name is that noise; ``./pink`` is a path.

Layout of OUT (evaluate pairs references and estimates by relative path, so the noisy and clean
trees mirror each other)::

    OUT/noisy/snr<S>dB/<rel>.wav   the mixtures (enhance OUT/noisy ENH/)
    OUT/clean/snr<S>dB/<rel>.wav   their references, at the mixture's gain (evaluate --ref OUT/clean --est ENH)
    OUT/manifest.csv               one row per mixture (paths relative to OUT)
"""

from __future__ import annotations

import csv
import io
import logging
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from sdmvae_cli.audio.io import (
    AUDIO_SUFFIXES,
    SILENCE_PEAK,
    check_finite,
    check_rate,
    full_scale_gain,
    mix_down,
    read_raw,
    write_audio,
)
from sdmvae_cli.core.atomic import write_text
from sdmvae_cli.core.errors import SdmvaeError, UsageError
from sdmvae_cli.core.lock import claim_folder, lock_scope
from sdmvae_cli.core.outputs import check_dir_destination, check_files_destinations, is_within

log = logging.getLogger("sdmvae")

#: generated noises: the power spectrum's exponent (power ~ 1/f^exponent)
COLOURS = {"white": 0.0, "pink": 1.0, "brown": 2.0}
NOISE_KINDS = (*COLOURS, "babble")
#: the range of --snr, in dB: beyond it a mixture is noise alone or clean speech for any metric
SNR_RANGE = (-20.0, 40.0)
#: utterances summed into one babble (fewer when CLEAN holds fewer others)
BABBLE_TALKERS = 6
MANIFEST = "manifest.csv"
COLUMNS = ("noisy", "clean", "source", "noise", "babble_of", "snr", "snr_measured", "gain_db")


@dataclass
class MixPlan:
    """Everything checked before the first file is written."""

    cleans: list[tuple[Path, str]]  # (file, relative id without suffix)
    noise: str | list[Path]  # a generated kind, or the noise files
    out: Path
    snrs: list[float]
    pairs: dict[tuple[str, float], tuple[Path, Path]] = field(default_factory=dict)  # (id, snr) -> (noisy, clean ref)


@dataclass
class MixResult:
    rows: list[dict]
    failures: list[tuple[Path, str]]
    manifest: Path


def snr_tag(snr: float) -> str:
    """``snr5dB``, ``snr-5dB``, ``snr2.5dB``: the folder of one SNR."""
    return f"snr{snr + 0.0:g}dB"


def snr_db(clean: np.ndarray, noise: np.ndarray) -> float:
    """The SNR over the whole signal, in float64 whatever the inputs' type."""
    c, n = np.asarray(clean, dtype=np.float64), np.asarray(noise, dtype=np.float64)
    return float(10 * np.log10(np.sum(c * c) / np.sum(n * n)))


def coloured_noise(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise of power spectrum ~ 1/f^exponent (0 white, 1 pink, 2 brown), unit variance."""
    x = rng.standard_normal(n)
    if exponent:
        spec = np.fft.rfft(x)
        f = np.arange(spec.size, dtype=np.float64)
        f[0] = f[1] if f.size > 1 else 1.0  # no infinite DC gain
        x = np.fft.irfft(spec * f ** (-exponent / 2), n)
    return x / x.std()


def fit_length(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``x`` looped or cropped to ``n`` samples, from a random offset."""
    start = int(rng.integers(x.size))
    return np.take(x, np.arange(start, start + n), mode="wrap")


def mixture(clean: np.ndarray, noise: np.ndarray, snr: float) -> tuple[np.ndarray, np.ndarray, float]:
    """(noisy, clean reference, gain) as float32: the noise scaled to ``snr`` dB below the clean
    signal; both scaled by one gain (<= 1) when the mixture or the reference would pass full scale."""
    c = clean.astype(np.float64)
    n = noise.astype(np.float64) * math.sqrt(np.sum(c * c) / np.sum(noise.astype(np.float64) ** 2) / 10 ** (snr / 10))
    noisy = c + n
    g = full_scale_gain(max(float(np.max(np.abs(noisy))), float(np.max(np.abs(c)))))
    return (noisy * g).astype(np.float32), (c * g).astype(np.float32), g


def _mono(path: Path, rate: int | None = None) -> tuple[np.ndarray, int]:
    """A file as a finite mono float32 waveform, at ``rate`` when given (resampled)."""
    data, src_rate = read_raw(path)
    check_rate(path, src_rate)
    check_finite(path, data)
    if data.shape[1] > 1:
        log.warning("%s: %d channels mixed down to mono", path, data.shape[1])
    x = mix_down(data)
    if rate is not None and src_rate != rate:
        import librosa

        x = librosa.resample(x, orig_sr=src_rate, target_sr=rate, res_type="soxr_hq").astype(np.float32)
    if x.size == 0 or float(np.max(np.abs(x))) < SILENCE_PEAK:
        raise SdmvaeError(f"{path}: silent or empty; it has no level to mix at an SNR")
    return x, rate or src_rate


def _audio_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())


def _inputs(path: Path, what: str, hint: str = "") -> list[Path]:
    if not path.exists():
        raise SdmvaeError(f"{what} {path}: no such file or directory{hint}")
    files = _audio_files(path) if path.is_dir() else [path]
    if not files:
        raise SdmvaeError(f"{what} {path}: no audio files ({', '.join(AUDIO_SUFFIXES)})")
    return files


def plan_mix(clean: Path, noise: str, out: Path, snrs: list[float], overwrite: bool = False) -> MixPlan:
    """Every check before any work: SNRs in range, inputs that exist, an OUT that is neither an
    input folder nor inside one (nor holds one), and no existing output unless ``overwrite``."""
    bad = [s for s in snrs if not SNR_RANGE[0] <= s <= SNR_RANGE[1]]
    if bad or not snrs:
        raise UsageError(f"--snr must be in [{SNR_RANGE[0]:g}, {SNR_RANGE[1]:g}] dB, got {bad[0] if bad else 'none'}")
    clean, out = Path(clean), Path(out)
    files = _inputs(clean, "clean speech")
    cleans = [(f, f.relative_to(clean).with_suffix("").as_posix() if clean.is_dir() else f.stem) for f in files]
    noise_files: list[Path] = []
    if noise not in NOISE_KINDS:
        noise_files = _inputs(Path(noise), "noise", f" (nor a generated noise: {', '.join(NOISE_KINDS)})")
    elif noise == "babble" and len(cleans) < 2:
        raise SdmvaeError(f"babble noise sums OTHER utterances of the clean speech; {clean} holds only one")
    folders = [p for p in [clean, *([Path(noise)] if noise_files else [])] if p.is_dir()]
    check_dir_destination(out, inputs=folders)
    for p in folders:
        if is_within(p, out):
            raise SdmvaeError(f"the input {p} lies inside the output {out}; choose a separate output folder")
    snrs = list(dict.fromkeys(float(s) + 0.0 for s in snrs))
    plan = MixPlan(cleans, noise_files or noise, out, snrs)
    for _, rel in cleans:
        for s in snrs:
            plan.pairs[(rel, s)] = (out / "noisy" / snr_tag(s) / f"{rel}.wav", out / "clean" / snr_tag(s) / f"{rel}.wav")
    dsts = [p for pair in plan.pairs.values() for p in pair] + [out / MANIFEST]
    check_files_destinations(dsts, inputs=files + noise_files, overwrite=overwrite)
    return plan


def _noise_for(plan: MixPlan, i: int, n: int, rate: int, rng: np.random.Generator) -> tuple[np.ndarray, str, str]:
    """(noise of ``n`` samples at ``rate``, its name, the babble's utterances) for clean file ``i``."""
    if isinstance(plan.noise, list):
        path = plan.noise[int(rng.integers(len(plan.noise)))]
        x, _ = _mono(path, rate)
        return fit_length(x, n, rng), str(path), ""
    if plan.noise in COLOURS:
        return coloured_noise(n, COLOURS[plan.noise], rng), plan.noise, ""
    own, parent = plan.cleans[i][1], plan.cleans[i][0].parent
    others = [j for j, (f, rel) in enumerate(plan.cleans) if rel != own and f.parent != parent]
    others = others or [j for j, (_, rel) in enumerate(plan.cleans) if rel != own]
    picked = sorted(rng.choice(others, size=min(BABBLE_TALKERS, len(others)), replace=False).tolist())
    total = np.zeros(n)
    for j in picked:
        x, _ = _mono(plan.cleans[j][0], rate)
        total += fit_length(x / np.sqrt(np.mean(np.square(x, dtype=np.float64))), n, rng)
    return total, "babble", ";".join(plan.cleans[j][1] for j in picked)


def _mix_one(plan: MixPlan, i: int, seed: int) -> list[dict]:
    """Every SNR's mixture of clean file ``i``, written; its manifest rows."""
    src, rel = plan.cleans[i]
    clean, rate = _mono(src)
    rng = np.random.default_rng([seed, zlib.crc32(rel.encode())])
    noise, name, babble_of = _noise_for(plan, i, clean.size, rate, rng)
    if float(np.max(np.abs(noise))) < SILENCE_PEAK:
        raise SdmvaeError(f"{name}: the noise for {src} is silent; it cannot be mixed at an SNR")
    rows = []
    for s in plan.snrs:
        noisy, ref, g = mixture(clean, noise, s)
        dst_noisy, dst_clean = plan.pairs[(rel, s)]
        write_audio(dst_clean, ref, rate)
        write_audio(dst_noisy, noisy, rate)
        rows.append(
            {
                "noisy": dst_noisy.relative_to(plan.out).as_posix(),
                "clean": dst_clean.relative_to(plan.out).as_posix(),
                "source": str(src),
                "noise": name,
                "babble_of": babble_of,
                "snr": f"{s:g}",
                "snr_measured": f"{snr_db(ref, noisy.astype(np.float64) - ref):.4f}",
                "gain_db": f"{20 * math.log10(g):.2f}",
            }
        )
    return rows


def _remove_stale(out: Path, keep: set[Path]) -> None:
    """With --overwrite: the mixtures an earlier manifest of OUT listed that this one does not
    (other SNRs, files gone from CLEAN), so OUT holds one test set, not two mixed."""
    try:
        old = list(csv.DictReader(io.StringIO((out / MANIFEST).read_text(encoding="utf-8"))))
    except (OSError, UnicodeDecodeError, csv.Error):
        return
    for row in old:
        for col in ("noisy", "clean"):
            p = out / str(row.get(col) or "")
            if row.get(col) and p not in keep and p.is_file() and is_within(p, out) and p.suffix == ".wav":
                p.unlink()
                for d in p.parents:  # the folders it leaves empty (an SNR no longer made)
                    if d == out or any(d.iterdir()):
                        break
                    d.rmdir()


@lock_scope
def mix_folder(plan: MixPlan, seed: int = 0, progress: Callable[[], None] | None = None) -> MixResult:
    """Write every mixture of ``plan`` (from :func:`plan_mix`), then OUT/manifest.csv; a clean
    file that cannot be mixed (unreadable, silent) is a failure with its reason, the others go on."""
    claim_folder(plan.out)  # one writer per output folder (sdmvae_cli.core.lock)
    rows, failures = [], []
    for i, (src, _) in enumerate(plan.cleans):
        try:
            rows += _mix_one(plan, i, seed)
        except SdmvaeError as exc:
            failures.append((src, str(exc)))
        if progress:
            progress()
    _remove_stale(plan.out, {p for pair in plan.pairs.values() for p in pair})
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS)
    w.writeheader()
    w.writerows(rows)
    write_text(plan.out / MANIFEST, buf.getvalue())
    return MixResult(rows, failures, plan.out / MANIFEST)
