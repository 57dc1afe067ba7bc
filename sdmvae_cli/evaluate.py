"""`sdmvae evaluate`: the paper's protocol, and scoring of any two folders.

Checkpoint mode: every utterance of a prepared split is resynthesised from its ORIGINAL
waveform (untrimmed, as in the paper) and scored against that waveform at 16 kHz: the paper's
metrics (``pesq_nb``, the raw P.862 narrow-band score; ``estoi``, which the paper calls STOI)
and the modern ones (``pesq_wb``, ``stoi``, ``si_sdr``).

Sparsity, two protocols:
- ``hoyer`` (headline, the paper's, eq. 12): Hoyer's measure of the interpretable code of
  every STFT frame of the untrimmed utterance, averaged per file, then over files;
- ``hoyer_pooled`` (secondary): over the pooled frames of the split's prepared frames.npy
  (leading/trailing silence trimmed), per frame then averaged; with the fractions of (near-)zero
  entries and the active units. An all-zero code counts as Hoyer 1 in both.

Files that cannot be scored (silent, too short for PESQ/STOI, length mismatch) are listed
with their reason, counted, and left out of the means: never averaged in as -7 or NaN.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from sdmvae_cli import __version__
from sdmvae_cli.atomic import write_json, write_text
from sdmvae_cli.audio import AUDIO_SUFFIXES, load_audio
from sdmvae_cli.errors import SdmvaeError
from sdmvae_cli.metrics import AUDIO_KEYS, PESQ_MODE, MetricError, audio_metrics, hoyer, sparsity_summary
from sdmvae_cli.workers import single_threaded_worker

_WORKER: dict[str, Any] = {}


def _pkg_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def environment() -> dict[str, str]:
    return {
        "sdmvae": __version__,
        "pesq": _pkg_version("pesq"),
        "pystoi": _pkg_version("pystoi"),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def settings() -> dict[str, Any]:
    return {
        "pesq_wb": f"pesq package, mode {PESQ_MODE!r} (P.862.2 MOS-LQO)",
        "pesq_nb": "pesq package, mode 'nb', P.862.1 mapping inverted: raw P.862 (as pypesq, the paper's PESQ)",
        "sample_rate": 16000,
        "stoi": "pystoi stoi(extended=False)",
        "estoi": "pystoi stoi(extended=True) (the paper's STOI column)",
        "hoyer": "eq. 12 per frame over every frame of the untrimmed utterance, mean per file, then over files; all-zero frame = 1",
        "hoyer_pooled": "eq. 12 per frame over the split's pooled, silence-trimmed prepared frames; all-zero frame = 1",
    }


# -- workers -------------------------------------------------------------------------------
def _init_model_worker(ckpt: str) -> None:
    from sdmvae_cli.checkpoint import load_model

    _WORKER["model"] = load_model(ckpt)


def _score_utterance(entry: dict) -> dict:
    from sdmvae_cli.resynth import model_power_fn, resynthesise_audio

    lm = _WORKER["model"]
    row = {"id": entry["id"], "speaker": entry.get("speaker", ""), "path": entry["path"]}
    try:
        audio = load_audio(entry["path"], lm.stft, warn_stereo=False)
        res = resynthesise_audio(audio, lm.stft, model_power_fn(lm))
        row["hoyer"] = float(hoyer(res.codes).mean())  # the paper's protocol: every untrimmed frame
        row.update(audio_metrics(audio.samples, res.samples_16k, lm.stft.sample_rate))
    except (SdmvaeError, MetricError) as exc:
        row["error"] = str(exc)
    return row


def _score_pair(pair: tuple[str, str, str]) -> dict:
    from sdmvae_cli.stft import StftConfig

    rel, ref_path, est_path = pair
    row: dict[str, Any] = {"id": rel, "path": est_path}
    cfg = StftConfig()
    try:
        ref = load_audio(ref_path, cfg, warn_stereo=False)
        est = load_audio(est_path, cfg, warn_stereo=False, allow_silent=True)
        row.update(audio_metrics(ref.samples * ref.gain, est.samples * est.gain, cfg.sample_rate))
    except (SdmvaeError, MetricError) as exc:
        row["error"] = str(exc)
    return row


def _pool_init(init, initargs) -> None:
    single_threaded_worker()
    if init:
        init(*initargs)


def _run_pool(fn: Callable, items: list, jobs: int, init=None, initargs=(), progress: Callable[[], None] | None = None) -> list[dict]:
    rows: list[dict] = []
    if jobs <= 1 or len(items) <= 1:
        if init:
            init(*initargs)  # in this process: keep its thread pools
        for it in items:
            rows.append(fn(it))
            if progress:
                progress()
        return rows
    import pesq  # noqa: F401  (imported once here: forked workers inherit the modules)
    import pystoi  # noqa: F401

    with ProcessPoolExecutor(max_workers=jobs, initializer=_pool_init, initargs=(init, initargs)) as ex:
        for row in ex.map(fn, items, chunksize=1):
            rows.append(row)
            if progress:
                progress()
    return rows


# -- summaries -----------------------------------------------------------------------------
def mean_std(rows: list[dict], keys: Iterable[str]) -> dict[str, dict[str, float]]:
    out = {}
    for k in keys:
        vals = np.array([r[k] for r in rows if "error" not in r and r.get(k) is not None and math.isfinite(r[k])], dtype=np.float64)
        out[k] = {"mean": float(vals.mean()) if vals.size else None, "std": float(vals.std()) if vals.size else None, "n": int(vals.size)}
    return out


def rows_csv(rows: list[dict], keys: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["id", "speaker", "path", *keys, "error"], extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


@dataclass
class EvalResult:
    summary: dict
    rows: list[dict]
    out_dir: Path
    failures: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def _write(out_dir: Path, summary: dict, rows: list[dict], keys: list[str], extra: dict[str, np.ndarray] | None = None) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "per_file.csv", rows_csv(rows, keys))
    write_json(out_dir / "summary.json", summary)
    if extra:
        from sdmvae_cli.atomic import atomic_path

        for name, arr in extra.items():
            with atomic_path(out_dir / f"{name}.npy", suffix=".npy") as tmp:
                with open(tmp, "wb") as fh:
                    np.save(fh, arr)


@torch.no_grad()
def split_codes(lm, prepared_dir: Path, split: str, batch: int = 65536) -> np.ndarray:
    """Interpretable codes of every prepared frame of a split, vectorised in big batches."""
    from sdmvae_cli.frames import open_frames

    frames = open_frames(prepared_dir, split)
    out = np.empty((frames.shape[0], lm.model.code_dim), dtype=np.float32)
    for s in range(0, frames.shape[0], batch):
        x = torch.from_numpy(np.array(frames[s : s + batch], dtype=np.float32))
        out[s : s + x.shape[0]] = lm.model.interpretable_code(lm.model.encode(x)).numpy()
    return out


def evaluate_checkpoint(ckpt: str | Path, prepared_dir: str | Path, split: str = "test", out_dir: str | Path | None = None,
                        jobs: int = 1, limit: int | None = None, progress_factory=None) -> EvalResult:
    from sdmvae_cli.checkpoint import load_model
    from sdmvae_cli.prepare import load_prepare_info, read_manifest

    prepared_dir = Path(prepared_dir)
    lm = load_model(ckpt)
    info = load_prepare_info(prepared_dir)
    if info["stft"] != lm.stft.to_dict():
        raise SdmvaeError(f"{prepared_dir} was prepared with another STFT config than {ckpt} was trained with")
    entries = read_manifest(prepared_dir, split)
    if limit:
        entries = entries[:limit]
    codes = split_codes(lm, prepared_dir, split)
    h = hoyer(codes)  # pooled, trimmed frames: the secondary protocol
    bar = progress_factory(len(entries)) if progress_factory else None
    rows = _run_pool(_score_utterance, entries, jobs, _init_model_worker, (str(lm.path),), progress=(bar.update if bar else None))
    if bar:
        bar.close()
    by_id = {e["id"]: e for e in entries}
    for r in rows:
        e = by_id[r["id"]]
        if e["n_frames"]:
            r["hoyer_pooled"] = float(h[e["frame_offset"] : e["frame_offset"] + e["n_frames"]].mean())
    failures = [{"id": r["id"], "path": r["path"], "reason": r["error"]} for r in rows if "error" in r]
    out = Path(out_dir) if out_dir else Path(lm.path).parent / f"eval-{split}"
    keys = [*AUDIO_KEYS, "hoyer", "hoyer_pooled"]
    sparsity = sparsity_summary(codes)
    sparsity["hoyer_pooled"] = sparsity.pop("hoyer_mean")
    sparsity["hoyer_pooled_std"] = sparsity.pop("hoyer_std")
    summary = {
        "kind": "checkpoint",
        "checkpoint": str(Path(lm.path).resolve()),
        "model": lm.model_config.to_dict(),
        "train": lm.checkpoint["config"].get("train", {}),
        "best_epoch": lm.checkpoint.get("epoch"),
        "prepared_dir": str(prepared_dir.resolve()),
        "data_fingerprint": info.get("fingerprint"),
        "split": split,
        "files": len(rows),
        "scored": len(rows) - len(failures),
        "failed": len(failures),
        "failures": failures,
        "metrics": mean_std(rows, keys),
        "sparsity": sparsity,
        "versions": environment(),
        "settings": settings(),
    }
    _write(out, summary, rows, keys, {"hoyer_frames": h.astype(np.float32)})
    return EvalResult(summary, rows, out, failures)


def pair_folders(ref_dir: Path, est_dir: Path) -> tuple[list[tuple[str, str, str]], list[dict]]:
    """Pairs by relative path (suffix ignored); missing estimates are failures."""
    for d, name in ((ref_dir, "--ref"), (est_dir, "--est")):
        if not d.is_dir():
            raise SdmvaeError(f"{name} {d} is not a directory")
    refs = sorted(p for p in ref_dir.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    if not refs:
        raise SdmvaeError(f"--ref {ref_dir}: no audio files")
    ests = {p.relative_to(est_dir).with_suffix("").as_posix(): p for p in est_dir.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()}
    pairs, missing = [], []
    for r in refs:
        rel = r.relative_to(ref_dir).with_suffix("").as_posix()
        if rel in ests:
            pairs.append((rel, str(r), str(ests[rel])))
        else:
            missing.append({"id": rel, "path": str(r), "error": f"no estimate for {rel} under {est_dir}"})
    return pairs, missing


def evaluate_folders(ref_dir: str | Path, est_dir: str | Path, out_dir: str | Path, jobs: int = 1, progress_factory=None) -> EvalResult:
    ref_dir, est_dir = Path(ref_dir), Path(est_dir)
    pairs, missing = pair_folders(ref_dir, est_dir)
    bar = progress_factory(len(pairs)) if progress_factory else None
    rows = _run_pool(_score_pair, pairs, jobs, progress=(bar.update if bar else None)) + missing
    if bar:
        bar.close()
    failures = [{"id": r["id"], "path": r["path"], "reason": r["error"]} for r in rows if "error" in r]
    keys = list(AUDIO_KEYS)
    summary = {
        "kind": "folders",
        "ref_dir": str(ref_dir.resolve()),
        "est_dir": str(est_dir.resolve()),
        "files": len(rows),
        "scored": len(rows) - len(failures),
        "failed": len(failures),
        "failures": failures,
        "metrics": mean_std(rows, keys),
        "versions": environment(),
        "settings": settings(),
    }
    out = Path(out_dir)
    _write(out, summary, rows, keys)
    return EvalResult(summary, rows, out, failures)


def default_jobs() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
