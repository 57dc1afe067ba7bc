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
with their reason, counted, and left out of the means: never averaged in as -7 or NaN. Each
metric is computed on its own (:func:`sdmvae_cli.metrics.score_pair`): a metric that fails on
a file that the others score (PESQ on a file of about 2 minutes or more, whose C code
segfaults: see :mod:`sdmvae_cli.metrics`) is NaN in per_file.csv with its reason in the
``metric_errors`` column, counted in summary.json's ``metric_failed`` / ``metric_failures``
and warned about; the file's other metrics stay in the means. Scoring long files in pieces
would give a number that is not the metric, so we do not.

Crash isolation: every file is scored in a worker process (also with ``-j 1``), so anything
else that kills its process costs that one file, recorded with its reason, and a fresh worker
takes the next file. Results are appended to ``per_file.partial.jsonl`` in the output folder as they
arrive: after Ctrl-C or kill -9 the same command continues from there (it is checked to
belong to the same checkpoint/data/settings, else discarded), and when the run completes the
final ``per_file.csv`` and ``summary.json`` are written atomically and the journal removed.
An output folder holding a finished evaluation is replaced only with ``overwrite``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import multiprocessing as mp
import multiprocessing.connection
import os
import platform
import signal
from collections import deque
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from sdmvae_cli import __version__
from sdmvae_cli.atomic import write_json, write_text
from sdmvae_cli.audio import AUDIO_SUFFIXES, SILENCE_PEAK, load_audio
from sdmvae_cli.errors import Interrupted, SdmvaeError
from sdmvae_cli.lock import claim_folder, lock_scope
from sdmvae_cli.metrics import AUDIO_KEYS, PESQ_MODE, MetricError, hoyer, score_pair, sparsity_summary
from sdmvae_cli.threads import single_threaded

_WORKER: dict[str, Any] = {}
JOURNAL = "per_file.partial.jsonl"
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
        _check_estimate(res.samples_16k)
        row.update(_scores(audio.samples, res.samples_16k, lm.stft.sample_rate))
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
    return {"metric_failed": {k: n for k, n in counts.items() if n},
            "metric_failures": [{"id": r["id"], "path": r["path"], "reason": r["metric_errors"]} for r in partial]}


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _check_estimate(est: np.ndarray) -> None:
    """A silent estimate is a failure that says so (PESQ would fail with a NaN conversion)."""
    if est.size == 0 or float(np.max(np.abs(est))) < SILENCE_PEAK:
        raise MetricError("the estimate is silent (PESQ and STOI cannot score silence)")


def _item_row(item) -> dict:
    """The identifying columns of a row, for a file whose worker died or raised."""
    if isinstance(item, dict):
        return {"id": item["id"], "speaker": item.get("speaker", ""), "path": item["path"]}
    rel, _, est_path = item
    return {"id": rel, "path": est_path}


def _crash_reason(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            how = signal.Signals(-exitcode).name
        except ValueError:
            how = f"signal {-exitcode}"
    else:
        how = f"exit status {exitcode}"
    return f"the scoring process died ({how}) on this file"


def _worker_main(conn, fn, init, initargs) -> None:
    """Worker loop: (index, item) in, (index, row) out; None ends it. Ctrl-C is the parent's."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    single_threaded()
    if init:
        init(*initargs)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if msg is None:
            return
        i, item = msg
        try:
            row = fn(item)
        except Exception as exc:  # a bug or an unexpected library error: this file's failure, not the run's
            first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
            row = {**_item_row(item), "error": f"{type(exc).__name__}{': ' + first if first else ''}"}
        conn.send((i, row))


class _Worker:
    def __init__(self, ctx, fn, init, initargs):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, fn, init, initargs), daemon=True)
        self.proc.start()
        child.close()
        self.task: tuple[int, Any] | None = None

    def give(self, task) -> None:
        self.task = task
        self.conn.send(task)

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.proc.kill()
        else:
            try:
                self.conn.send(None)
            except OSError:
                pass
        self.proc.join(timeout=None if kill else 5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


def _read_journal(path: Path, identity: dict) -> dict[str, dict]:
    """Rows of an interrupted run with the same identity (a torn last line is ignored)."""
    if not path.exists():
        return {}
    rows: dict[str, dict] = {}
    with open(path, encoding="utf-8", errors="replace") as fh:
        try:
            head = json.loads(fh.readline())
        except json.JSONDecodeError:
            head = None
        if not isinstance(head, dict) or head.get("identity") != identity:
            log.warning("%s belongs to another evaluation (checkpoint, data or settings differ); starting afresh", path)
            return {}
        for line in fh:
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by kill -9
            if isinstance(r, dict) and "id" in r:
                rows[r["id"]] = r
    return rows


def _run_pool(fn: Callable, items: list, jobs: int, init=None, initargs=(), progress: Callable[[], None] | None = None,
              journal: Path | None = None, identity: dict | None = None) -> list[dict]:
    """Score ``items`` in ``jobs`` worker processes (at least one: crash isolation); rows in
    item order. With ``journal``, rows already there (same ``identity``) are reused and every
    new row is appended as it arrives, so an interruption loses nothing finished."""
    ident = identity or {}
    done = _read_journal(journal, ident) if journal is not None else {}
    rows: dict[int, dict] = {}
    pending = deque()
    for i, it in enumerate(items):
        prev = done.get(_item_row(it)["id"])
        if prev is not None:
            rows[i] = prev
            if progress:
                progress()
        else:
            pending.append((i, it))
    jfh = None
    if journal is not None:
        journal.parent.mkdir(parents=True, exist_ok=True)
        fresh = not done
        jfh = open(journal, "w" if fresh else "a", encoding="utf-8")
        if fresh:
            jfh.write(json.dumps({"journal": "sdmvae-evaluate", "identity": ident}) + "\n")
            for r in rows.values():
                jfh.write(json.dumps(r) + "\n")
            jfh.flush()

    def record(i: int, row: dict) -> None:
        rows[i] = row
        if jfh is not None:
            jfh.write(json.dumps(row) + "\n")
            jfh.flush()  # in the OS's hands: survives kill -9 of this process
        if progress:
            progress()

    workers: list[_Worker] = []
    try:
        if pending:
            import pesq  # noqa: F401  (imported once here: forked workers inherit the modules)
            import pystoi  # noqa: F401

            ctx = mp.get_context("fork")
            workers = [_Worker(ctx, fn, init, initargs) for _ in range(min(max(1, jobs), len(pending)))]
            for w in workers:
                w.give(pending.popleft())
            while any(w.task is not None for w in workers):
                busy = [w for w in workers if w.task is not None]
                ready = set(mp.connection.wait([w.conn for w in busy] + [w.proc.sentinel for w in busy]))
                for k, w in enumerate(workers):
                    if w.task is None or (w.conn not in ready and w.proc.sentinel not in ready):
                        continue
                    try:
                        if not w.conn.poll():
                            raise EOFError
                        i, row = w.conn.recv()
                    except (EOFError, OSError):  # the worker died with this file in hand
                        w.proc.join()
                        i, item = w.task
                        row = {**_item_row(item), "error": _crash_reason(w.proc.exitcode)}
                        w.stop(kill=True)
                        w = workers[k] = _Worker(ctx, fn, init, initargs)
                    w.task = None
                    record(i, row)
                    if pending:
                        w.give(pending.popleft())
    except KeyboardInterrupt:
        where = f"; the {len(rows)} file(s) scored so far are kept in {journal}: run the same command again to continue" if journal else ""
        raise Interrupted(f"interrupted after {len(rows)} of {len(items)} file(s){where}") from None
    finally:
        for w in workers:
            w.stop(kill=w.task is not None)
        if jfh is not None:
            jfh.close()
    return [rows[i] for i in range(len(items))]


# -- summaries -----------------------------------------------------------------------------
def mean_std(rows: list[dict], keys: Iterable[str]) -> dict[str, dict[str, float]]:
    out = {}
    for k in keys:
        vals = np.array([r[k] for r in rows if "error" not in r and r.get(k) is not None and math.isfinite(r[k])], dtype=np.float64)
        out[k] = {"mean": float(vals.mean()) if vals.size else None, "std": float(vals.std()) if vals.size else None, "n": int(vals.size)}
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


def check_out_dir(out_dir: Path, overwrite: bool, inputs: Iterable[Path] = ()) -> None:
    """Before scoring: the output folder is writable, not an input, and holds no finished
    evaluation unless ``overwrite`` (an interrupted one, a journal only, is continued)."""
    from sdmvae_cli.outputs import check_dir_destination

    check_dir_destination(out_dir, inputs=list(inputs))
    claim_folder(out_dir)  # one writer per evaluation folder, until the evaluation returns (sdmvae_cli.lock)
    if (out_dir / "summary.json").exists() and not overwrite:
        raise SdmvaeError(f"{out_dir} already holds an evaluation (summary.json); pass --overwrite to replace it, or choose another --out")
    if overwrite:
        (out_dir / JOURNAL).unlink(missing_ok=True)


def _write(out_dir: Path, summary: dict, rows: list[dict], keys: list[str], extra: dict[str, np.ndarray] | None = None) -> None:
    """Final outputs, each atomic; summary.json last (its presence means "finished"), then the
    journal goes."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "per_file.csv", rows_csv(rows, keys))
    if extra:
        from sdmvae_cli.atomic import atomic_path

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
    """Interpretable codes of every prepared frame of a split, vectorised in big batches."""
    from sdmvae_cli.frames import open_frames

    frames = open_frames(prepared_dir, split)
    out = np.empty((frames.shape[0], lm.model.code_dim), dtype=np.float32)
    for s in range(0, frames.shape[0], batch):
        x = torch.from_numpy(np.array(frames[s : s + batch], dtype=np.float32)).to(next(lm.model.parameters()).device)
        with torch.no_grad():
            out[s : s + x.shape[0]] = lm.model.code_of(x).cpu().numpy()  # the code resynthesis uses
    return out


def default_eval_dir(ckpt_path: str | Path, split: str) -> Path:
    """``<run dir>/eval-<split>``; for a released model (inside the installed package, never a
    place to write) ``./eval-<name>-<split>`` in the current folder."""
    from sdmvae_cli.released import is_released

    p = Path(ckpt_path)
    return Path(f"eval-{p.stem}-{split}") if is_released(p) else p.parent / f"eval-{split}"


@lock_scope
def evaluate_checkpoint(ckpt: str | Path, prepared_dir: str | Path, split: str = "test", out_dir: str | Path | None = None,
                        jobs: int = 1, limit: int | None = None, progress_factory=None, overwrite: bool = False,
                        device: str = "cpu") -> EvalResult:
    """Score ``ckpt`` (a file, run directory or released name) on a prepared split.

    ``device``: where the split's codes (the batched encoder pass for the pooled Hoyer) are
    computed; the per-file resynthesis and metrics (PESQ/STOI: CPU code) run in CPU workers."""
    from sdmvae_cli.checkpoint import load_model, validation_record
    from sdmvae_cli.prepare import load_prepare_info, read_manifest

    prepared_dir = Path(prepared_dir)
    lm = load_model(ckpt)
    out = Path(out_dir) if out_dir else default_eval_dir(lm.path, split)
    check_out_dir(out, overwrite)
    info = load_prepare_info(prepared_dir)
    if info["stft"] != lm.stft.to_dict():
        raise SdmvaeError(f"{prepared_dir} was prepared with another STFT config than {ckpt} was trained with")
    entries = read_manifest(prepared_dir, split)
    if limit:
        entries = entries[:limit]
    codes = split_codes(load_model(lm.path, device=device) if str(device) != "cpu" else lm, prepared_dir, split)
    h = hoyer(codes)  # pooled, trimmed frames: the secondary protocol
    bar = progress_factory(len(entries)) if progress_factory else None
    st = Path(lm.path).stat()
    ident = _identity(kind="checkpoint", checkpoint=str(Path(lm.path).resolve()), size=st.st_size, mtime_ns=st.st_mtime_ns,
                      data=info.get("fingerprint"), split=split)
    rows = _run_pool(_score_utterance, entries, jobs, _init_model_worker, (str(lm.path),), progress=(bar.update if bar else None),
                     journal=out / JOURNAL, identity=ident)
    if bar:
        bar.close()
    by_id = {e["id"]: e for e in entries}
    for r in rows:
        e = by_id[r["id"]]
        if e["n_frames"]:
            r["hoyer_pooled"] = float(h[e["frame_offset"] : e["frame_offset"] + e["n_frames"]].mean())
    failures = [{"id": r["id"], "path": r["path"], "reason": r["error"]} for r in rows if "error" in r]
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


@lock_scope
def evaluate_folders(ref_dir: str | Path, est_dir: str | Path, out_dir: str | Path, jobs: int = 1, progress_factory=None,
                     overwrite: bool = False) -> EvalResult:
    ref_dir, est_dir, out = Path(ref_dir), Path(est_dir), Path(out_dir)
    check_out_dir(out, overwrite, inputs=[ref_dir, est_dir])
    pairs, missing = pair_folders(ref_dir, est_dir)
    bar = progress_factory(len(pairs)) if progress_factory else None
    ident = _identity(kind="folders", ref=str(ref_dir.resolve()), est=str(est_dir.resolve()))
    rows = _run_pool(_score_pair, pairs, jobs, progress=(bar.update if bar else None), journal=out / JOURNAL, identity=ident) + missing
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


def read_per_file(eval_dir: Path) -> list[dict]:
    """per_file.csv of an evaluation; one clear line where it is missing, unreadable or lacks
    the columns the page needs (a corrupt or edited file)."""
    f = eval_dir / "per_file.csv"
    if not f.is_file():
        raise SdmvaeError(f"{eval_dir}: no per_file.csv")
    try:
        with open(f, newline="") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            columns = reader.fieldnames or []
    except (UnicodeDecodeError, csv.Error):
        raise SdmvaeError(f"{f}: not a CSV written by `sdmvae evaluate` (a corrupt or edited file)") from None
    if not columns:
        raise SdmvaeError(f"{f}: empty (a corrupt or truncated file)")
    missing = [c for c in ("id", "path") if c not in columns]
    if missing:
        raise SdmvaeError(f"{f}: no {' or '.join(repr(c) for c in missing)} column (a corrupt or edited file)")
    return rows
