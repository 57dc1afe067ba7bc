"""The files of a report page: every chosen utterance resynthesised by every model (16-bit FLAC
and a spectrogram each), and per model its config, summary, codes, Hoyer histogram and losses.

The resynthesis is written as `sdmvae resynth` writes it (:func:`sdmvae_cli.audio.io.write_within_full_scale`:
at the input's level, scaled by one gain, with a warning, where it would pass full scale), so what
is heard on the page is what `resynth` gives; clipping it instead added distortion the model
did not make. The input is the source file itself, written as it is.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from sdmvae_cli.audio.io import Audio, restore, write_audio, write_within_full_scale
from sdmvae_cli.audio.stft import power_spectrogram
from sdmvae_cli.core.atomic import write_json
from sdmvae_cli.data.extract import load_utterance
from sdmvae_cli.inference.resynth import Resynthesis, model_power_fn, power_in_out, resynthesise_audio
from sdmvae_cli.nets.checkpoint import LoadedModel, load_model
from sdmvae_cli.report.figures import plot_codes, plot_hoyer_histogram, plot_hoyer_histograms, plot_power
from sdmvae_cli.report.inputs import Run, training_history
from sdmvae_cli.training.curves import plot_history

AUDIO_EXT = ".flac"  # 16-bit FLAC: lossless and about half the size of 16-bit WAV
AUDIO_SUBTYPE = "PCM_16"


@dataclass
class Assets:
    """What :func:`write_assets` wrote, as paths relative to the page."""

    utterances: list[dict] = field(default_factory=list)
    models: list[dict] = field(default_factory=list)
    overview: str | None = None
    codes_vmax: float | None = None


def _input_cell(out: Path, u: int, audio: Audio, lm: LoadedModel) -> dict:
    """The input of utterance ``u`` (as every model saw it: mono, at the source rate and level):
    its audio and spectrogram; ``top_db``, its peak, is the colour scale of the outputs' too."""
    wav, png = f"audio/u{u + 1}-input{AUDIO_EXT}", f"img/u{u + 1}-input.png"
    write_audio(out / wav, np.clip(restore(audio.samples, audio, lm.stft), -1.0, 1.0), audio.source_rate, subtype=AUDIO_SUBTYPE)
    with torch.no_grad():
        p_in = power_spectrogram(torch.from_numpy(audio.samples), lm.stft).numpy()
    top = float(10 * np.log10(max(p_in.max(), 1e-10)))
    plot_power(p_in, lm.stft.hop_length / lm.stft.sample_rate, lm.stft.sample_rate, out / png, "input", top)
    return {"name": "input", "label": "Input", "slug": None, "top_db": top, "audio": wav, "spectrogram": png}


def _output_cell(out: Path, u: int, utt: dict, run: Run, audio: Audio, res: Resynthesis, lm: LoadedModel, top: float) -> dict:
    """Utterance ``u`` resynthesised by ``run``'s model: its audio and spectrogram."""
    wav, png = f"audio/u{u + 1}-{run.slug}{AUDIO_EXT}", f"img/u{u + 1}-{run.slug}.png"
    _, p_out = power_in_out(audio, res, lm.stft)
    write_within_full_scale(
        out / wav, res.output, audio.source_rate, utt["path"], f"resynthesis by {run.slug}", subtype=AUDIO_SUBTYPE
    )
    plot_power(p_out, lm.stft.hop_length / lm.stft.sample_rate, lm.stft.sample_rate, out / png, run.label, top)
    return {"name": run.slug, "label": run.label, "slug": run.slug, "audio": wav, "spectrogram": png}


def _model_entry(run: Run, lm: LoadedModel, out: Path, codes: np.ndarray | None, vmax: float | None) -> dict[str, Any]:
    """A model's section of the page: its config, summary and per-file scores copied, its codes
    (utterance 1, on the shared scale ``vmax``), Hoyer histogram and loss curves."""
    d = out / "models" / run.slug
    d.mkdir(parents=True, exist_ok=True)
    cfg_src = (run.run_dir / "config.json") if run.run_dir is not None else None
    if cfg_src is not None and cfg_src.is_file():
        shutil.copyfile(cfg_src, d / "config.json")
    else:
        write_json(d / "config.json", lm.checkpoint["config"])
    shutil.copyfile(run.eval_dir / "summary.json", d / "summary.json")
    shutil.copyfile(run.eval_dir / "per_file.csv", d / "per_file.csv")
    m: dict[str, Any] = {
        "slug": run.slug,
        "label": run.label,
        "seed": run.seed,
        "checkpoint": run.checkpoint.name,
        "best_epoch": run.summary.get("best_epoch"),
        "versions": run.summary.get("versions", {}),
        "config": f"models/{run.slug}/config.json",
        "summary": f"models/{run.slug}/summary.json",
        "per_file": f"models/{run.slug}/per_file.csv",
        "codes": None,
        "hoyer": None,
        "loss": None,
        "sparsity": run.summary.get("sparsity") or {},
    }
    if codes is not None:
        plot_codes(
            codes, lm.stft.hop_length / lm.stft.sample_rate, d / "codes.png", f"{run.label}: |code| of utterance 1", vmax=vmax
        )
        m["codes"] = f"models/{run.slug}/codes.png"
    h = None if run.hoyer is None else run.hoyer[np.isfinite(run.hoyer)]
    if h is not None and h.size:
        plot_hoyer_histogram(h, d / "hoyer.png", f"{run.label}: {run.summary.get('split', '')} frames")
        m["hoyer"] = f"models/{run.slug}/hoyer.png"
    if plot_history(d, training_history(run, lm.checkpoint)) is not None:
        m["loss"] = f"models/{run.slug}/loss.png"
    return m


def write_assets(runs: Sequence[Run], utts: Sequence[dict], out: Path, progress: Callable[[], None] | None = None) -> Assets:
    """Resynthesise every chosen utterance with every model; write audio, spectrograms,
    codes (one colour scale for all models), Hoyer histograms and loss curves under ``out``."""
    assets = Assets()
    (out / "audio").mkdir(parents=True, exist_ok=True)
    (out / "img").mkdir(parents=True, exist_ok=True)
    cells: list[list[dict]] = [[] for _ in utts]
    codes_first: list[np.ndarray | None] = []
    loaded = []
    for run in runs:
        lm = load_model(run.checkpoint)
        loaded.append(lm)
        for u, utt in enumerate(utts):
            audio = load_utterance(utt["path"], lm.stft, utt.get("start"), utt.get("end"))  # a manifest segment: its span
            res = resynthesise_audio(audio, lm.stft, model_power_fn(lm))
            if not cells[u]:  # the input, once
                cells[u].append(_input_cell(out, u, audio, lm))
            cells[u].append(_output_cell(out, u, utt, run, audio, res, lm, cells[u][0]["top_db"]))
            if u == 0:
                codes_first.append(res.codes)
            if progress:
                progress()
    for u, utt in enumerate(utts):
        for c in cells[u]:
            c.pop("top_db", None)
        assets.utterances.append({"index": u + 1, "id": utt["id"], "speaker": utt["speaker"], "cells": cells[u]})
    pooled = [np.abs(c).ravel() for c in codes_first if c is not None]
    assets.codes_vmax = float(np.percentile(np.concatenate(pooled), 99.5)) if pooled else None
    for i, (run, lm) in enumerate(zip(runs, loaded)):
        assets.models.append(_model_entry(run, lm, out, codes_first[i] if codes_first else None, assets.codes_vmax))
    with_frames = [(r.label, r.hoyer) for r in runs if r.hoyer is not None and r.hoyer.size and np.isfinite(r.hoyer).all()]
    if len(with_frames) > 1:
        plot_hoyer_histograms(with_frames, out / "img" / "hoyer-all.png")
        assets.overview = "img/hoyer-all.png"
    return assets
