"""What `sdmvae report` reads: the evaluated runs (evaluation or run directories), the utterances
to listen to, the data they came from and the runs' training histories.

Every summary is read by :mod:`sdmvae_cli.evaluation.results` (the reader `sdmvae table` uses), so
the report's rows and numbers are the table's; a damaged file is one clear error line.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sdmvae_cli.core.errors import SdmvaeError
from sdmvae_cli.data.prepared import read_manifest
from sdmvae_cli.evaluation.results import RunRow, read_hoyer_frames, read_per_file, read_summary, row_label, run_name
from sdmvae_cli.training.curves import LOSS_PREFIXES


@dataclass
class Run:
    """One evaluated model: its evaluation directory, checkpoint and (optional) run directory."""

    slug: str
    eval_dir: Path
    row: RunRow  # its summary as `sdmvae table` reads it (configuration, values)
    rows: list[dict]  # per_file.csv
    checkpoint: Path
    run_dir: Path | None = None
    hoyer: np.ndarray | None = None  # hoyer_frames.npy, where the evaluation wrote one
    name: str = ""  # the run folder, or the released model's name (:func:`run_name`)
    label: str = ""  # the page's title for this model: unique among the runs (:func:`unique_labels`)

    @property
    def summary(self) -> dict:
        return self.row.source

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
            raise SdmvaeError(
                f"{path}: a run directory with no eval-*/summary.json (run `sdmvae evaluate {path}/best.pt PREPARED_DIR` first)"
            )
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
        for tag in (
            lambda r: r.name,
            lambda r: None if r.seed is None else f"seed {r.seed}",
            lambda r: r.eval_dir.name,
            lambda r: r.slug,
        ):
            tags = [tag(r) for r in group]
            if None not in tags and len(set(tags)) == len(tags):
                break
        for r, t in zip(group, tags):
            r.label = f"{base} ({t})"


def _read_run(eval_dir: Path, run_dir: Path | None, taken: set[str]) -> Run:
    """One evaluation, read and checked; its slug is its name, made unique among ``taken``."""
    row = read_summary(eval_dir / "summary.json")  # checked as `sdmvae table` checks it
    summary = row.source
    if summary["kind"] != "checkpoint":
        raise SdmvaeError(f"{eval_dir}: not a checkpoint evaluation (folder-mode evaluations have no model to show)")
    if not summary.get("checkpoint"):
        raise SdmvaeError(f"{eval_dir}/summary.json: no 'checkpoint' field (a corrupt or edited summary)")
    rows = read_per_file(eval_dir)
    hoyer = read_hoyer_frames(eval_dir)
    ckpt = _checkpoint_of(summary, eval_dir, run_dir)
    name = run_name(run_dir, ckpt)
    slug = base = _slug(name)
    i = 2
    while slug in taken:
        slug, i = f"{base}-{i}", i + 1
    return Run(slug, eval_dir, row, rows, ckpt, run_dir, hoyer, name=name)


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
        runs.append(_read_run(eval_dir, run_dir, {r.slug for r in runs}))
    unique_labels(runs)
    return runs


# -- utterances -------------------------------------------------------------------------------
def _manifest_paths(summary: dict) -> dict[str, dict]:
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
            raise SdmvaeError(
                f"utterance {i}: no source path in {runs[0].eval_dir / 'per_file.csv'} (a truncated or edited file)"
            )
        path = Path(entry.get("path") or row["path"])
        if not path.is_file():
            raise SdmvaeError(f"utterance {i}: source audio {path} does not exist")
        out.append({"id": i, "speaker": entry.get("speaker", row.get("speaker", "")), "path": path})
    return out


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
        out[k] = {
            "prepared_dir": s.get("prepared_dir"),
            "split": s.get("split"),
            "fingerprint": s.get("data_fingerprint"),
            "corpus_dir": corpus,
            "files": s.get("files"),
            "scored": s.get("scored"),
            "models": [r.slug],
        }
    return list(out.values())


# -- training histories -----------------------------------------------------------------------
def read_history(f: Path) -> list[dict]:
    """history.csv read by its header: per epoch every loss column (``LOSS_PREFIXES``) that has a
    value, and ``best``. Why by header: train writes more columns than it once did (IS and KL
    terms, the validation median), and a resumed older run leaves some of them blank; reading
    three fixed columns left the IS and KL panels empty. Unreadable: [] (the figure is optional)."""
    try:
        with open(f, newline="") as fh:
            rows = list(csv.DictReader(fh))
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


def training_history(run: Run, ckpt: dict) -> list[dict]:
    """Training history: the run directory's history.csv, else the copy kept in the checkpoint."""
    f = (run.run_dir or run.checkpoint.parent) / "history.csv"
    hist = read_history(f) if f.is_file() else []
    return hist or list(ckpt.get("history") or [])
