"""`sdmvae evaluate`: the paper's protocol, and scoring of any two folders (or two files).

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
with their reason, counted, and left out of the means: never averaged in as -7 or NaN. Each
metric is computed on its own (:func:`sdmvae_cli.evaluation.metrics.score_pair`): a metric that fails on
a file that the others score (PESQ on a file of about 2 minutes or more, whose C code
segfaults: see :mod:`sdmvae_cli.evaluation.metrics`) is NaN in per_file.csv with its reason in the
``metric_errors`` column, counted in summary.json's ``metric_failed`` / ``metric_failures``
and warned about; the file's other metrics stay in the means. Scoring long files in pieces
would give a number that is not the metric, so we do not.

Crash isolation: every file is scored in a worker process (also with ``-j 1``), so anything
else that kills its process costs that one file, recorded with its reason, and a fresh worker
takes the next file. Results are appended to ``per_file.partial.jsonl`` in the output folder as they
arrive: after Ctrl-C or kill -9 the same command continues from there (it is checked to
belong to the same checkpoint/data/settings, else discarded), and when the run completes the
final ``per_file.csv`` and ``summary.json`` are written atomically and the journal removed
(:mod:`sdmvae_cli.evaluation.journal`). Reading these outputs: :mod:`sdmvae_cli.evaluation.results`; what folder mode pairs: :mod:`sdmvae_cli.evaluation.pairing`.
An output folder holding a finished evaluation is replaced only with ``overwrite``.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import platform
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from sdmvae_cli.audio.io import SILENCE_PEAK, load_audio
from sdmvae_cli.audio.stft import StftConfig
from sdmvae_cli.core.atomic import atomic_path, write_json, write_text
from sdmvae_cli.core.errors import SdmvaeError
from sdmvae_cli.core.lock import claim_folder, lock_scope
from sdmvae_cli.core.outputs import check_dir_destination
from sdmvae_cli.core.version import __version__
from sdmvae_cli.data.extract import load_utterance
from sdmvae_cli.data.frames import open_frames
from sdmvae_cli.data.prepared import load_prepare_info, read_manifest
from sdmvae_cli.evaluation.journal import JOURNAL, run_pool
from sdmvae_cli.evaluation.metrics import AUDIO_KEYS, METRICS, MetricError, hoyer, score_pair, sparsity_summary
from sdmvae_cli.evaluation.pairing import check_ref_est, pair_folders
from sdmvae_cli.inference.resynth import block_frames_of, model_power_fn, resynthesise_audio
from sdmvae_cli.nets.checkpoint import load_model
from sdmvae_cli.nets.released import is_released
from sdmvae_cli.training.selection import validation_record

_WORKER: dict[str, Any] = {}
log = logging.getLogger("sdmvae")


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def environment() -> dict[str, str]:
    return {
        "sdmvae": __version__,
        "pesq": package_version("pesq"),
        "pystoi": package_version("pystoi"),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def settings() -> dict[str, Any]:
    """How each metric is computed (the registry's descriptions), recorded in summary.json."""
    return {"sample_rate": 16000, **{m.key: m.description for m in METRICS}}


# -- workers -------------------------------------------------------------------------------
def _init_model_worker(ckpt: str) -> None:
    _WORKER["model"] = load_model(ckpt)


def _score_utterance(entry: dict) -> dict:
    lm = _WORKER["model"]
    row = {"id": entry["id"], "speaker": entry.get("speaker", ""), "path": entry["path"]}
    try:
        audio = load_utterance(entry["path"], lm.stft, entry.get("start"), entry.get("end"))  # a segment: its span
        res = resynthesise_audio(audio, lm.stft, model_power_fn(lm))
        row["hoyer"] = float(hoyer(res.codes).mean())  # the paper's protocol: every untrimmed frame
        _check_estimate(res.samples_16k)
        row.update(_scores(audio.samples, res.samples_16k, lm.stft.sample_rate))
    except (SdmvaeError, MetricError) as exc:
        row["error"] = str(exc)
    return row


def _score_pair(pair: tuple[str, str, str]) -> dict:
    rel, ref_path, est_path = pair
    row: dict[str, Any] = {"id": rel, "path": est_path}
    cfg = StftConfig()
    try:
        ref = load_audio(ref_path, cfg, warn_stereo=False)
        est = load_audio(est_path, cfg, warn_stereo=False, allow_silent=True)
        _check_estimate(est.samples * est.gain)
        row.update(_scores(ref.samples * ref.gain, est.samples * est.gain, cfg.sample_rate))
    except (SdmvaeError, MetricError) as exc:
        row["error"] = str(exc)
    return row


def _scores(ref: np.ndarray, est: np.ndarray, rate: int) -> dict[str, Any]:
    """A row's metric columns: every metric that could be scored, NaN for one that could not
    (PESQ on a long file) with the reason in ``metric_errors`` ("pesq_nb, pesq_wb: why"). The
    file still counts as scored: its other metrics are in the means."""
    values, reasons = score_pair(ref, est, rate)
    row: dict[str, Any] = dict(values)
    by_reason: dict[str, list[str]] = {}
    for k, why in reasons.items():
        by_reason.setdefault(why, []).append(k)
    if by_reason:
        row["metric_errors"] = "; ".join(f"{', '.join(ks)}: {why}" for why, ks in by_reason.items())
    return row


def metric_failures(rows: list[dict], keys: Iterable[str]) -> dict[str, Any]:
    """Scored files that miss some metrics: per metric how many, and each file with its reason;
    one warning line per file (a mean over fewer files must not pass unnoticed)."""
    partial = [r for r in rows if "error" not in r and r.get("metric_errors")]
    for r in partial:
        log.warning("%s: %s", r["id"], r["metric_errors"])
    counts = {k: sum(1 for r in partial if not _finite(r.get(k))) for k in keys}
    return {
        "metric_failed": {k: n for k, n in counts.items() if n},
        "metric_failures": [{"id": r["id"], "path": r["path"], "reason": r["metric_errors"]} for r in partial],
    }


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _check_estimate(est: np.ndarray) -> None:
    """A silent estimate is a failure that says so (PESQ would fail with a NaN conversion)."""
    if est.size == 0 or float(np.max(np.abs(est))) < SILENCE_PEAK:
        raise MetricError("the estimate is silent (PESQ and STOI cannot score silence)")


# -- summaries -----------------------------------------------------------------------------
def mean_std(rows: list[dict], keys: Iterable[str]) -> dict[str, dict[str, float]]:
    out = {}
    for k in keys:
        vals = np.array(
            [r[k] for r in rows if "error" not in r and r.get(k) is not None and math.isfinite(r[k])], dtype=np.float64
        )
        out[k] = {
            "mean": float(vals.mean()) if vals.size else None,
            "std": float(vals.std()) if vals.size else None,
            "n": int(vals.size),
        }
    return out


def rows_csv(rows: list[dict], keys: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["id", "speaker", "path", *keys, "error", "metric_errors"], extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()})
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


def _check_audio_listed(entries: list[dict], prepared_dir: Path, split: str) -> None:
    """Frames prepared without a corpus (a synthetic preparation) have no audio to resynthesise:
    one line before any work, not a failure per file."""
    no_audio = sum(not e.get("path") for e in entries)
    if no_audio:
        raise SdmvaeError(
            f"{prepared_dir}: {no_audio} of the {len(entries)} utterances of its {split!r} split have no audio file "
            "(frames prepared without a corpus): evaluate resynthesises audio"
        )


def check_out_dir(out_dir: Path, overwrite: bool, inputs: Iterable[Path] = ()) -> None:
    """Before scoring: the output folder is writable, not an input, and holds no finished
    evaluation unless ``overwrite`` (an interrupted one, a journal only, is continued)."""
    check_dir_destination(out_dir, inputs=list(inputs))
    claim_folder(out_dir)  # one writer per evaluation folder, until the evaluation returns (sdmvae_cli.core.lock)
    if (out_dir / "summary.json").exists() and not overwrite:
        raise SdmvaeError(
            f"{out_dir} already holds an evaluation (summary.json); pass --overwrite to replace it, or choose another --out"
        )
    if overwrite:
        (out_dir / JOURNAL).unlink(missing_ok=True)


def _write(out_dir: Path, summary: dict, rows: list[dict], keys: list[str], extra: dict[str, np.ndarray] | None = None) -> None:
    """Final outputs, each atomic; summary.json last (its presence means "finished"), then the
    journal goes."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "per_file.csv", rows_csv(rows, keys))
    if extra:
        for name, arr in extra.items():
            with atomic_path(out_dir / f"{name}.npy", suffix=".npy") as tmp:
                with open(tmp, "wb") as fh:
                    np.save(fh, arr)
    write_json(out_dir / "summary.json", summary)
    (out_dir / JOURNAL).unlink(missing_ok=True)


def _identity(**kw) -> dict:
    """What a journal must match to be continued: the inputs, the settings, the version."""
    return {**kw, "settings": settings(), "sdmvae": __version__}


@torch.no_grad()
def split_codes(lm, prepared_dir: Path, split: str, batch: int = 65536) -> np.ndarray:
    """Interpretable codes of every prepared frame of a split, vectorised in big batches (a
    sequence family's: :func:`_sequence_codes`)."""
    frames = open_frames(prepared_dir, split)
    dev = next(lm.model.parameters()).device
    if lm.model.SEQUENTIAL:
        return _sequence_codes(lm, prepared_dir, split, frames, dev)
    out = np.empty((frames.shape[0], lm.model.code_dim), dtype=np.float32)
    for s in range(0, frames.shape[0], batch):
        x = torch.from_numpy(np.array(frames[s : s + batch], dtype=np.float32)).to(dev)
        out[s : s + x.shape[0]] = lm.model.code_of(x).cpu().numpy()  # the code resynthesis uses
    return out


def _sequence_codes(lm, prepared_dir: Path, split: str, frames: np.ndarray, dev: torch.device) -> np.ndarray:
    """A sequence family's codes, utterance by utterance (the manifest's offsets), each one
    sequence in blocks of the family's resynthesis length, as resynthesis codes it. Frames no
    utterance covers would be codes of nothing: refused."""
    out = np.full((frames.shape[0], lm.model.code_dim), np.nan, dtype=np.float32)
    block = block_frames_of(lm)
    for row in read_manifest(prepared_dir, split):
        o, n = int(row["frame_offset"]), int(row["n_frames"])
        for s in range(o, o + n, block):
            x = torch.from_numpy(np.array(frames[s : min(s + block, o + n)], dtype=np.float32)).to(dev)
            out[s : s + x.shape[0]] = lm.model.code_of(x).cpu().numpy()
    if np.isnan(out[:, 0]).any():
        raise SdmvaeError(
            f"{prepared_dir}/{split}: {int(np.isnan(out[:, 0]).sum())} frames belong to no utterance of its manifest; "
            "re-run `sdmvae prepare --force`"
        )
    return out


def default_eval_dir(ckpt_path: str | Path, split: str) -> Path:
    """``<run dir>/eval-<split>``; for a released model (inside the installed package, never a
    place to write) ``./eval-<name>-<split>`` in the current folder."""
    p = Path(ckpt_path)
    return Path(f"eval-{p.stem}-{split}") if is_released(p) else p.parent / f"eval-{split}"


@lock_scope
def evaluate_checkpoint(
    ckpt: str | Path,
    prepared_dir: str | Path,
    split: str = "test",
    out_dir: str | Path | None = None,
    jobs: int = 1,
    limit: int | None = None,
    progress_factory=None,
    overwrite: bool = False,
    device: str = "cpu",
) -> EvalResult:
    """Score ``ckpt`` (a file, run directory or released name) on a prepared split.

    ``device``: where the split's codes (the batched encoder pass for the pooled Hoyer) are
    computed; the per-file resynthesis and metrics (PESQ/STOI: CPU code) run in CPU workers."""
    prepared_dir = Path(prepared_dir)
    lm = load_model(ckpt)
    out = Path(out_dir) if out_dir else default_eval_dir(lm.path, split)
    check_out_dir(out, overwrite, inputs=[prepared_dir])  # never inside the prepared data
    info = load_prepare_info(prepared_dir)
    if info["stft"] != lm.stft.to_dict():
        raise SdmvaeError(f"{prepared_dir} was prepared with another STFT config than {ckpt} was trained with")
    entries = read_manifest(prepared_dir, split)
    if limit:
        entries = entries[:limit]
    _check_audio_listed(entries, prepared_dir, split)
    codes = split_codes(load_model(lm.path, device=device) if str(device) != "cpu" else lm, prepared_dir, split)
    h = hoyer(codes)  # pooled, trimmed frames: the secondary protocol
    bar = progress_factory(len(entries)) if progress_factory else None
    st = Path(lm.path).stat()
    ident = _identity(
        kind="checkpoint",
        checkpoint=str(Path(lm.path).resolve()),
        size=st.st_size,
        mtime_ns=st.st_mtime_ns,
        data=info.get("fingerprint"),
        split=split,
    )
    rows = run_pool(
        _score_utterance,
        entries,
        jobs,
        _init_model_worker,
        (str(lm.path),),
        progress=(bar.update if bar else None),
        journal=out / JOURNAL,
        identity=ident,
    )
    if bar:
        bar.close()
    by_id = {e["id"]: e for e in entries}
    for r in rows:
        e = by_id[r["id"]]
        if e["n_frames"]:
            r["hoyer_pooled"] = float(h[e["frame_offset"] : e["frame_offset"] + e["n_frames"]].mean())
    failures = [{"id": r["id"], "path": r["path"], "reason": r["error"]} for r in rows if "error" in r]
    keys = [*AUDIO_KEYS, *(m.key for m in METRICS if not m.audio)]  # per_file.csv: audio first
    sparsity = sparsity_summary(codes)
    sparsity["hoyer_pooled"] = sparsity.pop("hoyer_mean")
    sparsity["hoyer_pooled_std"] = sparsity.pop("hoyer_std")
    summary = {
        "kind": "checkpoint",
        "checkpoint": str(Path(lm.path).resolve()),
        "model": lm.model_config.to_dict(),
        "train": lm.checkpoint["config"].get("train", {}),
        "best_epoch": lm.checkpoint.get("epoch"),
        "validation": validation_record(lm.checkpoint),
        "prepared_dir": str(prepared_dir.resolve()),
        "data_fingerprint": info.get("fingerprint"),
        "split": split,
        "files": len(rows),
        "scored": len(rows) - len(failures),
        "failed": len(failures),
        "failures": failures,
        **metric_failures(rows, AUDIO_KEYS),
        "metrics": mean_std(rows, keys),
        "sparsity": sparsity,
        "versions": environment(),
        "settings": settings(),
    }
    _write(out, summary, rows, keys, {"hoyer_frames": h.astype(np.float32)})
    return EvalResult(summary, rows, out, failures)


@lock_scope
def evaluate_folders(
    ref_dir: str | Path, est_dir: str | Path, out_dir: str | Path, jobs: int = 1, progress_factory=None, overwrite: bool = False
) -> EvalResult:
    """Score estimates against references: two folders paired by relative path, or two files."""
    ref_dir, est_dir, out = Path(ref_dir), Path(est_dir), Path(out_dir)
    check_ref_est(ref_dir, est_dir)
    check_out_dir(out, overwrite, inputs=[ref_dir, est_dir])
    pairs, missing = pair_folders(ref_dir, est_dir)
    bar = progress_factory(len(pairs)) if progress_factory else None
    ident = _identity(kind="folders", ref=str(ref_dir.resolve()), est=str(est_dir.resolve()))
    rows = (
        run_pool(_score_pair, pairs, jobs, progress=(bar.update if bar else None), journal=out / JOURNAL, identity=ident)
        + missing
    )
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
        **metric_failures(rows, AUDIO_KEYS),
        "metrics": mean_std(rows, keys),
        "versions": environment(),
        "settings": settings(),
    }
    _write(out, summary, rows, keys)
    return EvalResult(summary, rows, out, failures)


def default_jobs() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
