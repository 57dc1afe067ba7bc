"""`sdmvae demo`: resynthesise and score speech on a machine with no corpus, in under a minute.

Default input (``source="speech"``): three short LibriSpeech utterances shipped in the package
(``sdmvae_cli/demo_audio``, CC BY 4.0, attribution in ATTRIBUTION.txt there), so the first
thing a new user sees is real speech through a released model. ``espeak`` speaks a few
sentences with espeak-ng (TTS); ``synthetic`` is the built-in source-filter signal of
:mod:`sdmvae_cli.audio.synthetic`, which is NOT speech and is labelled as such. ``--audio DIR`` uses
the user's own files instead.
"""

from __future__ import annotations

import shutil
import subprocess
from importlib import resources
from pathlib import Path

import numpy as np

from sdmvae_cli.audio.io import AUDIO_SUFFIXES, load_audio, write_audio, write_within_full_scale
from sdmvae_cli.audio.synthetic import source_filter_speech
from sdmvae_cli.core.errors import SdmvaeError
from sdmvae_cli.evaluation.metrics import METRICS, MetricError, audio_metrics, hoyer, sparsity_summary
from sdmvae_cli.inference.resynth import load_for_resynth, model_power_fn, power_in_out, resynthesise_audio
from sdmvae_cli.report.figures import plot_codes, plot_spectrograms

SENTENCES = [
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It is easy to tell the depth of a well.",
]


SOURCES = ("speech", "espeak", "synthetic")
#: the metrics of one file on its own, shown per file (the pooled Hoyer is over a split's frames)
DEMO_METRICS = tuple(m for m in METRICS if m.over_files)


def demo_speech() -> list[Path]:
    """The bundled real-speech utterances (sorted by name)."""
    d = Path(str(resources.files("sdmvae_cli.report").joinpath("demo_audio")))
    files = sorted(d.glob("*.flac")) if d.is_dir() else []
    if not files:
        raise SdmvaeError(
            "the demo speech is missing from this installation (sdmvae_cli/demo_audio); use --audio DIR or --source synthetic"
        )
    return files


def make_inputs(work: Path, source: str) -> tuple[list[Path], str]:
    """The demo inputs; returns (paths, a label saying what they are). Bundled speech is read
    in place; generated inputs are written under ``work``."""
    if source not in SOURCES:
        raise SdmvaeError(f"unknown demo source {source!r}; expected one of {', '.join(SOURCES)}")
    if source == "speech":
        return demo_speech(), "real speech: 3 LibriSpeech test-other utterances (CC BY 4.0, bundled; see ATTRIBUTION.txt)"
    work.mkdir(parents=True, exist_ok=True)
    if source == "espeak" and shutil.which("espeak-ng"):
        paths = []
        for i, s in enumerate(SENTENCES):
            p = work / f"espeak_{i}.wav"
            subprocess.run(["espeak-ng", "-w", str(p), s], check=True, capture_output=True)
            paths.append(p)
        return paths, "espeak-ng synthetic speech (TTS, not a human voice)"
    if source == "espeak":
        raise SdmvaeError("--source espeak: espeak-ng is not installed")
    paths = []
    for i in range(3):
        p = work / f"source_filter_{i}.wav"
        write_audio(p, 0.5 * source_filter_speech(3.0, seed=i), 16000)
        paths.append(p)
    return paths, "built-in synthetic source-filter signal (NOT speech: harmonics + formants + noise)"


def run_demo(
    out_dir: Path,
    model: str | None = None,
    source: str = "speech",
    audio_dir: Path | None = None,
    limit: int = 5,
    plots: bool = True,
) -> dict:
    lm = load_for_resynth(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    if audio_dir is not None:
        files = sorted(p for p in Path(audio_dir).rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)[:limit]
        if not files:
            raise SdmvaeError(f"{audio_dir}: no audio files")
        label = f"real audio from {audio_dir}"
    else:
        files, label = make_inputs(out_dir / "inputs", source)
    rows = []
    all_codes = []
    for f in files:
        a = load_audio(f, lm.stft)
        res = resynthesise_audio(a, lm.stft, model_power_fn(lm))
        dst = out_dir / f"{f.stem}.resynth.wav"
        write_within_full_scale(dst, res.output, a.source_rate, f, "resynthesis")  # as `sdmvae resynth` writes it
        row = {"input": str(f), "output": str(dst), "hoyer": float(hoyer(res.codes).mean())}
        try:
            row.update(audio_metrics(a.samples, res.samples_16k, lm.stft.sample_rate))
        except MetricError as exc:
            row["error"] = str(exc)
        rows.append(row)
        all_codes.append(res.codes)
        if plots and len(rows) == 1:
            hop_s = lm.stft.hop_length / lm.stft.sample_rate
            p_in, p_out = power_in_out(a, res, lm.stft)
            plot_spectrograms(
                p_in, p_out, hop_s, lm.stft.sample_rate, out_dir / "spectrograms.png", f"{f.name} through {Path(lm.path).name}"
            )
            plot_codes(res.codes, hop_s, out_dir / "codes.png")
    sp = sparsity_summary(np.concatenate(all_codes)) if all_codes else {}
    if rows:  # the paper's protocol: every frame of each untrimmed file, mean per file, then over files
        sp["hoyer"] = float(np.mean([r["hoyer"] for r in rows]))
    return {"model": lm.path, "source": label, "files": rows, "sparsity": sp, "out_dir": str(out_dir)}
