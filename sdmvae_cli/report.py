"""`sdmvae report`: a static listening page for evaluated runs (index.html + assets).

Why: a number such as PESQ only earns trust once the speech has been heard. The page puts, for
N test utterances, the input and every model's resynthesis side by side (players and
spectrograms), above the results table (the paper's metrics and the modern ones, mean +- std
over seeds) and, per model, its latent codes, Hoyer histogram and loss curves.

Three steps, each a plain function: :func:`collect_runs` reads evaluation outputs (or run
directories), :func:`build_page` computes the page model (resynthesising the chosen utterances
from the checkpoints and writing the assets), :func:`render` fills the Jinja2 template. The
folder is self-contained: relative links only, no script or style from the network, so it opens
from ``file://``. It is written beside its destination and renamed into place when complete.
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import math
import os
import platform
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from sdmvae_cli import __version__
from sdmvae_cli.atomic import write_json, write_text
from sdmvae_cli.errors import SdmvaeError
from sdmvae_cli.evaluate import package_version, read_per_file
from sdmvae_cli.lock import claim_folder, lock_scope
from sdmvae_cli.nets.base import ModelConfig
from sdmvae_cli.plots import LOSS_PREFIXES
from sdmvae_cli.prepare import current_fingerprint
from sdmvae_cli.table import load_summary, row_label

log = logging.getLogger("sdmvae")

AUDIO_EXT = ".flac"  # 16-bit FLAC: lossless and about half the size of 16-bit WAV


# -- metrics of the results table -----------------------------------------------------------
@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    group: str  # "paper" (Table 1 of the paper) or "modern"
    digits: int


METRICS: tuple[Metric, ...] = (
    Metric("pesq_nb", "PESQ P.862 raw (paper)", "paper", 2),
    Metric("estoi", "ESTOI (paper's STOI)", "paper", 3),
    Metric("hoyer", "Hoyer (paper protocol)", "paper", 3),
    Metric("pesq_wb", "PESQ-WB (P.862.2)", "modern", 2),
    Metric("stoi", "STOI", "modern", 3),
    Metric("si_sdr", "SI-SDR (dB)", "modern", 1),
    Metric("hoyer_pooled", "Hoyer pooled (trimmed frames)", "modern", 3),
)

# Training options that change how a run is executed, not what it learns (or, for the seed,
# what varies between the repetitions that the table averages over).
NOT_CONFIG = frozenset({"seed", "device", "cuda_graph", "compile", "graph_steps", "val_batch", "max_device_fraction", "max_device_bytes"})


def is_old_summary(summary: dict) -> bool:
    """Summaries written before pesq_nb/pesq_wb existed call PESQ-WB ``pesq``."""
    return "pesq_wb" not in summary.get("metrics", {}) and "pesq" in summary.get("metrics", {})


def metric_stats(summary: dict, key: str) -> dict[str, Any] | None:
    """{"mean", "std", "n"} of one metric in an evaluation summary, or None when it has none.

    Accepts old summaries: ``pesq`` stands for ``pesq_wb``; the pooled Hoyer was
    ``sparsity.hoyer_mean``; ``pesq_nb`` is absent there (shown as a dash).
    """
    metrics, sp = summary.get("metrics", {}), summary.get("sparsity") or {}
    if key == "hoyer_pooled":
        v = sp.get("hoyer_pooled", sp.get("hoyer_mean"))
        if v is None:
            return None
        std = sp.get("hoyer_pooled_std", sp.get("hoyer_std"))
        return {"mean": float(v), "std": None if std is None else float(std), "n": sp.get("frames")}
    s = metrics.get(key)
    if s is None and key == "pesq_wb":
        s = metrics.get("pesq")
    if not s or s.get("mean") is None or not math.isfinite(s["mean"]):
        return None
    return s


# -- inputs ---------------------------------------------------------------------------------
@dataclass
class Run:
    """One evaluated model: its evaluation directory, checkpoint and (optional) run directory."""

    slug: str
    eval_dir: Path
    summary: dict
    rows: list[dict]
    checkpoint: Path
    run_dir: Path | None = None
    hoyer: np.ndarray | None = None  # hoyer_frames.npy, where the evaluation wrote one
    name: str = ""  # the run folder, or the released model's name (:func:`run_name`)
    label: str = ""  # the page's title for this model: unique among the runs (:func:`unique_labels`)

    @property
    def model_name(self) -> str:
        return row_label(self.summary["model"])

    @property
    def base_label(self) -> str:
        return f"{self.model_name}, m={self.summary['model']['latent']}"

    @property
    def seed(self) -> int | None:
        return self.summary.get("train", {}).get("seed")


def find_eval_dir(path: Path) -> tuple[Path, Path | None]:
    """(evaluation dir, run dir or None) for an evaluation dir or a training run dir."""
    path = Path(path)
    if (path / "summary.json").is_file():
        run_dir = path.parent if (path.parent / "config.json").is_file() and (path.parent / "best.pt").is_file() else None
        return path, run_dir
    if (path / "best.pt").is_file() or (path / "config.json").is_file():
        evals = sorted(p.parent for p in path.glob("eval-*/summary.json"))
        if not evals:
            raise SdmvaeError(f"{path}: a run directory with no eval-*/summary.json (run `sdmvae evaluate {path}/best.pt PREPARED_DIR` first)")
        test = [e for e in evals if e.name == "eval-test"]
        return (test or evals)[0], path
    if not path.exists():
        raise SdmvaeError(f"{path}: no such directory")
    raise SdmvaeError(f"{path}: neither an evaluation directory (summary.json) nor a run directory (best.pt)")


def _checkpoint_of(summary: dict, eval_dir: Path, run_dir: Path | None) -> Path:
    """The evaluated checkpoint; when its recorded absolute path is gone (a moved folder),
    the file of the same name in the run directory or beside the evaluation."""
    recorded = Path(summary["checkpoint"])
    if recorded.is_file():
        return recorded
    for d in (run_dir, eval_dir.parent):
        if d is not None and (d / recorded.name).is_file():
            return d / recorded.name
    raise SdmvaeError(f"{eval_dir}: the evaluated checkpoint {recorded} does not exist")


def run_name(run_dir: Path | None, ckpt: Path) -> str:
    """What a user calls the model: its run folder, else the checkpoint's name (a released
    model's, e.g. vae-m64), or its folder's for a best.pt/last.pt."""
    return run_dir.name if run_dir is not None else (ckpt.parent.name if ckpt.stem in ("best", "last") else ckpt.stem)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"


def unique_labels(runs: Sequence[Run]) -> None:
    """Title each run by its model and m, and where two runs share that title (two runs of one
    configuration, or two configurations that label alike) add what tells them apart: the run
    folder or released name, else the seed, else the evaluation folder, else the slug."""
    by: dict[str, list[Run]] = {}
    for r in runs:
        by.setdefault(r.base_label, []).append(r)
    for base, group in by.items():
        if len(group) == 1:
            group[0].label = base
            continue
        for tag in (lambda r: r.name, lambda r: None if r.seed is None else f"seed {r.seed}", lambda r: r.eval_dir.name, lambda r: r.slug):
            tags = [tag(r) for r in group]
            if None not in tags and len(set(tags)) == len(tags):
                break
        for r, t in zip(group, tags):
            r.label = f"{base} ({t})"


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def read_hoyer_frames(eval_dir: Path) -> np.ndarray | None:
    """hoyer_frames.npy of an evaluation (None where there is none): a 1-D array of numbers, or one
    clear line for a file that is not one (it is optional: deleting it leaves the histogram out)."""
    f = eval_dir / "hoyer_frames.npy"
    if not f.is_file():
        return None
    try:
        h = np.load(f, allow_pickle=False)
    except (ValueError, OSError, EOFError):
        h = None
    if not isinstance(h, np.ndarray) or h.ndim != 1 or not (np.issubdtype(h.dtype, np.integer) or np.issubdtype(h.dtype, np.floating)):
        raise SdmvaeError(f"{f}: not the per-frame Hoyer array `sdmvae evaluate` writes (corrupt; delete it to leave the histogram out)")
    return h


def hoyer_label(summary: dict, eval_dir: Path) -> str:
    """A histogram's legend for an evaluation: its run folder or released name (or evaluation
    folder), model, m."""
    ckpt = Path(summary.get("checkpoint") or "")
    run = (run_name(None, ckpt) if ckpt.name else "") or eval_dir.name
    return f"{run}: {row_label(summary['model'])}, m={summary['model']['latent']}"


def load_hoyer(eval_dir: Path) -> tuple[str, np.ndarray]:
    """(legend label, per-frame Hoyer) of a checkpoint evaluation, read and checked as the report
    reads them (`sdmvae plot hoyer`): anything else is one clear line."""
    eval_dir = Path(eval_dir)
    s = load_summary(eval_dir / "summary.json")
    h = read_hoyer_frames(eval_dir) if s["kind"] == "checkpoint" else None
    if h is None:
        raise SdmvaeError(f"{eval_dir}: no hoyer_frames.npy (an output directory of `sdmvae evaluate CKPT PREPARED_DIR`)")
    return hoyer_label(s, eval_dir), h


def collect_runs(paths: Sequence[str | Path]) -> list[Run]:
    """Read every input (evaluation dir or run dir) into a :class:`Run`, with unique slugs."""
    if not paths:
        raise SdmvaeError("give at least one evaluation directory or run directory")
    runs: list[Run] = []
    seen: dict[Path, Path] = {}
    for p in paths:
        eval_dir, run_dir = find_eval_dir(Path(p))
        key = eval_dir.resolve()
        if key in seen:
            raise SdmvaeError(f"{p}: the same evaluation as {seen[key]} (given twice)")
        seen[key] = Path(p)
        summary = load_summary(eval_dir / "summary.json")  # checked as `sdmvae table` checks it
        if summary["kind"] != "checkpoint":
            raise SdmvaeError(f"{eval_dir}: not a checkpoint evaluation (folder-mode evaluations have no model to show)")
        if not summary.get("checkpoint"):
            raise SdmvaeError(f"{eval_dir}/summary.json: no 'checkpoint' field (a corrupt or edited summary)")
        rows = read_per_file(eval_dir)
        hoyer = read_hoyer_frames(eval_dir)
        ckpt = _checkpoint_of(summary, eval_dir, run_dir)
        name = run_name(run_dir, ckpt)
        slug = _slug(name)
        taken = {r.slug for r in runs}
        base, i = slug, 2
        while slug in taken:
            slug, i = f"{base}-{i}", i + 1
        runs.append(Run(slug, eval_dir, summary, rows, ckpt, run_dir, hoyer, name=name))
    unique_labels(runs)
    return runs


# -- the results table ------------------------------------------------------------------------
def group_key(summary: dict) -> str:
    """Runs that differ only in their seed (and in how they were executed) share a row."""
    train = {k: v for k, v in summary.get("train", {}).items() if k not in NOT_CONFIG}
    return json.dumps({"model": ModelConfig.completed(summary["model"]), "train": train,
                       "data": current_fingerprint(summary.get("data_fingerprint"), summary.get("prepared_dir")),
                       "split": summary.get("split")}, sort_keys=True)


def _fmt(v: float, digits: int) -> str:
    return f"{v:.{digits}f}".replace("-", "\u2212")


def table_rows(runs: Sequence[Run]) -> list[dict]:
    """One row per configuration: per metric the mean over seeds of the runs' means, the
    standard deviation over seeds (ddof=1; none for a single seed) and the number of seeds."""
    from sdmvae_cli.table import row_key

    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(group_key(r.summary), []).append(r)
    rows = []
    for members in groups.values():
        first = members[0]
        cells = []
        for m in METRICS:
            stats = [metric_stats(r.summary, m.key) for r in members]
            vals = [s["mean"] for s in stats if s is not None]
            old = m.key == "hoyer" and any(is_old_summary(r.summary) for r in members)
            if not vals:
                cells.append({"key": m.key, "mean": None, "std": None, "n": 0, "text": "\u2013", "title": "not in these summaries", "old": False})
                continue
            mean = float(np.mean(vals))
            std = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
            text = _fmt(mean, m.digits) + ("" if std is None else f" \u00b1 {_fmt(std, m.digits)}")
            if std is not None:
                title = f"mean \u00b1 std over {len(vals)} seeds"
            else:
                s = next(s for s in stats if s is not None)
                title = f"one run; over files: std {s['std']:.3g}, n={s['n']}" if s.get("std") is not None else "one run"
            cells.append({"key": m.key, "mean": mean, "std": std, "n": len(vals), "text": text, "title": title, "old": old})
        rows.append({
            "label": first.model_name,
            "latent": int(first.summary["model"]["latent"]),
            "seeds": [r.seed for r in members],
            "models": [r.slug for r in members],
            "order": list(row_key(first.summary["model"])) + [int(first.summary["model"]["latent"])],
            "cells": cells,
        })
    _distinct_row_labels(rows)
    rows.sort(key=lambda r: (str(r["order"]), r["label"]))
    return rows


def _distinct_row_labels(rows: list[dict]) -> None:
    """Two configurations that label alike at one m (e.g. another learning rate) would be two
    identical rows: each is followed by its models' names on the page (slugs: unique)."""
    count: dict[tuple, int] = {}
    for r in rows:
        count[(r["label"], r["latent"])] = count.get((r["label"], r["latent"]), 0) + 1
    for r in rows:
        if count[(r["label"], r["latent"])] > 1:
            r["label"] += f" ({', '.join(r['models'])})"


# -- utterances -------------------------------------------------------------------------------
def _manifest_paths(summary: dict) -> dict[str, dict]:
    from sdmvae_cli.prepare import read_manifest

    prep = summary.get("prepared_dir")
    if not prep or not Path(prep).is_dir():
        return {}
    try:
        return {e["id"]: e for e in read_manifest(prep, summary.get("split", "test"))}
    except SdmvaeError:
        return {}


def choose_utterances(runs: Sequence[Run], n: int) -> list[dict]:
    """N utterances scored by every model, taken in turn from each speaker (for variety), in
    the order of the first evaluation. Source paths come from the prepared data's manifest,
    or from per_file.csv where the prepared directory is gone."""
    if n <= 0:
        return []
    scored = [{r["id"]: r for r in run.rows if not r.get("error")} for run in runs]
    common = [i for i in scored[0] if all(i in s for s in scored[1:])]
    if not common:
        raise SdmvaeError("no test utterance was scored by every model (were they evaluated on the same prepared data?)")
    manifest = _manifest_paths(runs[0].summary)
    by_spk: dict[str, list[str]] = {}
    for i in common:
        by_spk.setdefault(scored[0][i].get("speaker", "") or "", []).append(i)
    picked: list[str] = []
    while len(picked) < n and any(by_spk.values()):
        for ids in by_spk.values():
            if ids and len(picked) < n:
                picked.append(ids.pop(0))
    out = []
    for i in picked:
        row, entry = scored[0][i], manifest.get(i, {})
        if not (entry.get("path") or row.get("path")):
            raise SdmvaeError(f"utterance {i}: no source path in {runs[0].eval_dir / 'per_file.csv'} (a truncated or edited file)")
        path = Path(entry.get("path") or row["path"])
        if not path.is_file():
            raise SdmvaeError(f"utterance {i}: source audio {path} does not exist")
        out.append({"id": i, "speaker": entry.get("speaker", row.get("speaker", "")), "path": path})
    return out


# -- environment ------------------------------------------------------------------------------
def environment() -> dict[str, str]:
    """Versions of what built the page (the evaluations record their own)."""
    env = {"sdmvae": __version__, "python": platform.python_version()}
    for name in ("torch", "numpy", "pesq", "pystoi", "librosa", "soundfile", "matplotlib", "Jinja2"):
        env[name.lower()] = package_version(name)
    return env


def data_sources(runs: Sequence[Run]) -> list[dict]:
    """The distinct evaluation data: prepared directory, split, fingerprint and corpus root."""
    out: dict[tuple, dict] = {}
    for r in runs:
        s = r.summary
        k = (s.get("prepared_dir"), s.get("split"), s.get("data_fingerprint"))
        if k in out:
            out[k]["models"].append(r.slug)
            continue
        corpus = None
        info = Path(s["prepared_dir"]) / "prepare.json" if s.get("prepared_dir") else None
        if info is not None and info.is_file():
            try:  # shown for information only: a damaged prepare.json leaves it out
                corpus = json.loads(info.read_text()).get("corpus_dir")
            except (ValueError, AttributeError):
                corpus = None
        out[k] = {"prepared_dir": s.get("prepared_dir"), "split": s.get("split"), "fingerprint": s.get("data_fingerprint"),
                  "corpus_dir": corpus, "files": s.get("files"), "scored": s.get("scored"), "models": [r.slug]}
    return list(out.values())


# -- assets -----------------------------------------------------------------------------------
def write_audio16(path: Path, samples: np.ndarray, rate: int) -> None:
    """16-bit FLAC; samples beyond full scale are clipped (rare: resynthesis can overshoot)."""
    import soundfile as sf

    from sdmvae_cli.atomic import atomic_path

    with atomic_path(path, suffix=path.suffix) as tmp:
        sf.write(str(tmp), np.clip(samples, -1.0, 1.0), rate, format="FLAC", subtype="PCM_16")


def read_history(f: Path) -> list[dict]:
    """history.csv read by its header: per epoch every loss column (``LOSS_PREFIXES``) that has a
    value, and ``best``. Why by header: train writes more columns than it once did (IS and KL
    terms, the validation median), and a resumed older run leaves some of them blank; reading
    three fixed columns left the IS and KL panels empty. Unreadable: [] (the figure is optional)."""
    try:
        rows = read_rows(f)
    except (OSError, UnicodeDecodeError, csv.Error):
        return []
    out = []
    for r in rows:
        try:
            rec: dict[str, Any] = {"epoch": int(r["epoch"])}
        except (KeyError, TypeError, ValueError):
            continue
        for k, v in r.items():
            if isinstance(k, str) and k.startswith(LOSS_PREFIXES) and v:
                try:
                    rec[k] = float(v)
                except ValueError:
                    continue
        if r.get("best") in ("True", "False"):
            rec["best"] = r["best"] == "True"
        out.append(rec)
    return out


def _history(run: Run, ckpt: dict) -> list[dict]:
    """Training history: the run directory's history.csv, else the copy kept in the checkpoint."""
    f = (run.run_dir or run.checkpoint.parent) / "history.csv"
    hist = read_history(f) if f.is_file() else []
    return hist or list(ckpt.get("history") or [])


@dataclass
class Assets:
    """What :func:`build_page` wrote, as paths relative to the page."""

    utterances: list[dict] = field(default_factory=list)
    models: list[dict] = field(default_factory=list)
    overview: str | None = None
    codes_vmax: float | None = None


def write_assets(runs: Sequence[Run], utts: Sequence[dict], out: Path, progress: Callable[[], None] | None = None) -> Assets:
    """Resynthesise every chosen utterance with every model; write audio, spectrograms,
    codes (one colour scale for all models), Hoyer histograms and loss curves under ``out``."""
    import torch

    from sdmvae_cli.audio import load_audio, restore
    from sdmvae_cli.checkpoint import load_model
    from sdmvae_cli.plots import plot_codes, plot_hoyer_histogram, plot_hoyer_histograms, plot_power
    from sdmvae_cli.resynth import model_power_fn, power_in_out, resynthesise_audio
    from sdmvae_cli.stft import power_spectrogram
    from sdmvae_cli.train import plot_history

    assets = Assets()
    (out / "audio").mkdir(parents=True, exist_ok=True)
    (out / "img").mkdir(parents=True, exist_ok=True)
    cells: list[list[dict]] = [[] for _ in utts]
    codes_first: list[np.ndarray | None] = []
    loaded = []
    for run in runs:
        lm = load_model(run.checkpoint)
        loaded.append(lm)
        hop_s = lm.stft.hop_length / lm.stft.sample_rate
        for u, utt in enumerate(utts):
            audio = load_audio(utt["path"], lm.stft, warn_stereo=False)
            res = resynthesise_audio(audio, lm.stft, model_power_fn(lm))
            if not cells[u]:  # the input, once (as every model saw it: mono, at the source rate and level)
                write_audio16(out / "audio" / f"u{u + 1}-input{AUDIO_EXT}", restore(audio.samples, audio, lm.stft), audio.source_rate)
                with torch.no_grad():
                    p_in = power_spectrogram(torch.from_numpy(audio.samples), lm.stft).numpy()
                top = float(10 * np.log10(max(p_in.max(), 1e-10)))
                plot_power(p_in, hop_s, lm.stft.sample_rate, out / "img" / f"u{u + 1}-input.png", "input", top)
                cells[u].append({"name": "input", "label": "Input", "slug": None, "top_db": top,
                                 "audio": f"audio/u{u + 1}-input{AUDIO_EXT}", "spectrogram": f"img/u{u + 1}-input.png"})
            top = cells[u][0]["top_db"]
            _, p_out = power_in_out(audio, res, lm.stft)
            wav, png = f"audio/u{u + 1}-{run.slug}{AUDIO_EXT}", f"img/u{u + 1}-{run.slug}.png"
            write_audio16(out / wav, res.output, audio.source_rate)
            plot_power(p_out, hop_s, lm.stft.sample_rate, out / png, run.label, top)
            cells[u].append({"name": run.slug, "label": run.label, "slug": run.slug, "audio": wav, "spectrogram": png})
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
        d = out / "models" / run.slug
        d.mkdir(parents=True, exist_ok=True)
        hop_s = lm.stft.hop_length / lm.stft.sample_rate
        cfg_src = (run.run_dir / "config.json") if run.run_dir is not None else None
        if cfg_src is not None and cfg_src.is_file():
            shutil.copyfile(cfg_src, d / "config.json")
        else:
            write_json(d / "config.json", lm.checkpoint["config"])
        shutil.copyfile(run.eval_dir / "summary.json", d / "summary.json")
        shutil.copyfile(run.eval_dir / "per_file.csv", d / "per_file.csv")
        m: dict[str, Any] = {"slug": run.slug, "label": run.label, "seed": run.seed, "checkpoint": run.checkpoint.name,
                             "best_epoch": run.summary.get("best_epoch"), "versions": run.summary.get("versions", {}),
                             "config": f"models/{run.slug}/config.json", "summary": f"models/{run.slug}/summary.json",
                             "per_file": f"models/{run.slug}/per_file.csv", "codes": None, "hoyer": None, "loss": None,
                             "sparsity": run.summary.get("sparsity") or {}}
        if codes_first and codes_first[i] is not None:
            plot_codes(codes_first[i], hop_s, d / "codes.png", f"{run.label}: |code| of utterance 1", vmax=assets.codes_vmax)
            m["codes"] = f"models/{run.slug}/codes.png"
        h = None if run.hoyer is None else run.hoyer[np.isfinite(run.hoyer)]
        if h is not None and h.size:
            plot_hoyer_histogram(h, d / "hoyer.png", f"{run.label}: {run.summary.get('split', '')} frames")
            m["hoyer"] = f"models/{run.slug}/hoyer.png"
        if plot_history(d, _history(run, lm.checkpoint)) is not None:
            m["loss"] = f"models/{run.slug}/loss.png"
        assets.models.append(m)
    with_frames = [(r.label, r.hoyer) for r in runs
                   if r.hoyer is not None and r.hoyer.size and np.isfinite(r.hoyer).all()]
    if len(with_frames) > 1:
        plot_hoyer_histograms(with_frames, out / "img" / "hoyer-all.png")
        assets.overview = "img/hoyer-all.png"
    return assets


# -- page ---------------------------------------------------------------------------------------
def utterance_shortfall(runs: Sequence[Run], asked: int, shown: int) -> str | None:
    """Why the page shows fewer utterances than --utterances asked for (None when it does not):
    only utterances scored by every model are shown. Said on stderr and on the page, where a
    quiet shortfall (3 asked, 1 shown) looked like a bug."""
    if shown >= asked:
        return None
    per = ", ".join(f"{r.slug} {sum(not row.get('error') for row in r.rows)} of {len(r.rows)}" for r in runs)
    return (f"--utterances {asked} asked for, {shown} shown: only {shown} test utterance{'s' if shown != 1 else ''} "
            f"{'were' if shown != 1 else 'was'} scored by every model (scored: {per})")


def build_page(runs: Sequence[Run], assets: Assets, now: datetime | None = None, utterance_note: str | None = None) -> dict:
    """The page model: everything the template shows, JSON-serialisable (written as report.json)."""
    now = now or datetime.now(timezone.utc)
    eval_versions = []
    for r in runs:
        v = r.summary.get("versions")
        if v and v not in eval_versions:
            eval_versions.append(v)
    return {
        "title": "sdmvae listening report",
        "date": now.strftime("%Y-%m-%d %H:%M UTC"),
        "data": data_sources(runs),
        "versions": environment(),
        "eval_versions": eval_versions,
        "metrics": [{"key": m.key, "label": m.label, "group": m.group} for m in METRICS],
        "groups": [{"name": g, "span": sum(m.group == g for m in METRICS)} for g in ("paper", "modern")],
        "table": table_rows(runs),
        "old_summaries": any(is_old_summary(r.summary) for r in runs),
        "utterances": assets.utterances,
        "utterance_note": utterance_note,
        "models": assets.models,
        "overview": assets.overview,
        "codes_vmax": assets.codes_vmax,
    }


def render(page: dict) -> str:
    """index.html from the packaged template (autoescaped)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("sdmvae_cli", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.get_template("report.html.j2").render(page=page)


MARKER = "report.json"


@lock_scope
def make_report(paths: Sequence[str | Path], out: str | Path, n_utterances: int = 3, force: bool = False,
                progress_factory: Callable[[int], Any] | None = None, now: datetime | None = None) -> Path:
    """Write the report folder ``out`` (index.html, report.json, audio/, img/, models/).

    Built in a temporary sibling and renamed into place: an interrupted build leaves nothing
    that looks complete. An existing ``out`` is replaced only with ``force`` and only if it is
    an earlier report (it holds report.json), never another folder.
    """
    from sdmvae_cli.outputs import is_within

    out = Path(out)
    runs = collect_runs(paths)
    for r in runs:
        if is_within(r.eval_dir, out):
            raise SdmvaeError(f"--out {out} would replace an input ({r.eval_dir})")
        if is_within(out, r.eval_dir):  # the rule of every command: outputs never inside an input folder
            raise SdmvaeError(f"--out {out} is inside an input ({r.eval_dir}); choose a separate folder")
    claim_folder(out, beside=True)  # one writer per report, until it is in place (beside it: `out` is renamed into place)
    _remove_stale_builds(out)
    if out.exists():
        if not force:
            raise SdmvaeError(f"{out} exists; choose another --out, or --force to replace an earlier report")
        if not (out / MARKER).is_file():
            raise SdmvaeError(f"{out} exists and is not an sdmvae report; refusing to replace it")
    utts = choose_utterances(runs, n_utterances)
    note = utterance_shortfall(runs, n_utterances, len(utts))
    if note:
        log.warning("%s", note)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        bar = progress_factory(len(runs) * len(utts)) if progress_factory else None
        assets = write_assets(runs, utts, tmp, progress=(bar.update if bar else None))
        if bar:
            bar.close()
        page = build_page(runs, assets, now, note)
        write_json(tmp / MARKER, page)
        write_text(tmp / "index.html", render(page))
        os.chmod(tmp, 0o777 & ~_umask())
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.replace(out, old / "report")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / "index.html"


def _remove_stale_builds(out: Path) -> None:
    """The build folders (``.<name>.<random>/``) of reports of ``out`` killed before they were
    renamed into place (kill -9 gives no chance to clean up). Safe under the report's lock: no
    other build of ``out`` runs. A ``.<name>.old.*`` folder may hold the previous report: kept."""
    for d in out.parent.glob(f".{glob.escape(out.name)}.*"):
        if d.is_dir() and not d.is_symlink() and not d.name.startswith(f".{out.name}.old."):
            shutil.rmtree(d, ignore_errors=True)


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m

