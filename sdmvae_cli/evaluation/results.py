"""THE reader of `sdmvae evaluate`'s outputs (summary.json, per_file.csv, hoyer_frames.npy), with
the one rule of which summaries are seeds of one configuration and the one aggregation over them.

Why one module: `table` (every layout), the paired statistics and `report` each read summaries,
and each once had its own rule for which runs share a row (the report's counted any training
option, so two runs differing only in ``--patience`` were one row of ``table --layout table1`` and
two rows of the report). Reading, grouping and the mean ± std over seeds live here; the callers
only render. Every damaged or hand-edited file is one clear error line, never an internal error.

A configuration (:func:`config_key`): the model configuration (fields it predates at their
defaults), the learning rate, the batch size, the statistic the run stopped on, the split and the
prepared data (by its current fingerprint). Other training options (seed, patience, epochs,
device, ...) decide when or where a run stops, not what it is: their runs are seeds of one row.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sdmvae_cli.core.errors import SdmvaeError
from sdmvae_cli.data.prepared import current_fingerprint, read_manifest
from sdmvae_cli.evaluation.metrics import METRIC, METRICS
from sdmvae_cli.nets import REGISTRY, ModelConfig
from sdmvae_cli.nets.base import MODEL_FIELDS
from sdmvae_cli.training.options import TrainOptions, stop_on_of

#: the run's validation loss at the epoch its checkpoint holds (what it was selected by): read
#: with the metrics, shown by the ``runs`` layout; not a metric of the evaluation
VAL_LOSS = "val_loss"


# -- rows: label and order (the family hooks) -----------------------------------------------------
def _config(m: dict) -> ModelConfig:
    """A summary's model dict as a config, fields it predates at their defaults."""
    return ModelConfig.from_dict(ModelConfig.completed({k: v for k, v in m.items() if k in MODEL_FIELDS}))


def row_label(m: dict) -> str:
    """The family's label (its class's hook), then beta and the encoder input when not default."""
    cfg = _config(m)
    cls = REGISTRY.get(cfg.model)
    label = cls.family_label(cfg) if cls else cfg.model
    notes = []
    if cfg.beta != 1.0:
        notes.append(f"beta={cfg.beta:g}")
    if cfg.input_transform != "log":
        notes.append(f"{cfg.input_transform} input")
    return label + (f" [{', '.join(notes)}]" if notes else "")


def row_key(m: dict) -> tuple:
    """The paper's row order: each family's ``ROW_RANK`` (VAE, VSC, SDM-VAE, then the others),
    then its own order (VSC by alpha, SDM-VAE identity then DCT by k, ...)."""
    cfg = _config(m)
    cls = REGISTRY.get(cfg.model)
    return (cls.ROW_RANK, *cls.row_order(cfg)) if cls else (len(REGISTRY) + 99,)


def run_name(run_dir: Path | None, ckpt: Path) -> str:
    """What a user calls the model: its run folder, else the checkpoint's name (a released
    model's, e.g. vae-m64), or its folder's for a best.pt/last.pt."""
    return run_dir.name if run_dir is not None else (ckpt.parent.name if ckpt.stem in ("best", "last") else ckpt.stem)


def _summary_run_name(p: Path) -> str:
    """The run folder's name (``runs/x/eval-test/summary.json`` -> x); a renamed summary's stem."""
    if p.name != "summary.json":
        return p.stem
    parent = p.parent
    if parent.name.startswith("eval-") and parent.parent.name:
        return parent.parent.name
    return parent.name or str(p)


# -- summary.json ---------------------------------------------------------------------------------
def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_fields(p: Path, s: dict) -> None:
    """One clear line for a corrupt or hand-edited summary (a field of the wrong type), instead
    of an internal error deep in the table or report code."""

    def bad(what: str) -> SdmvaeError:
        return SdmvaeError(f"{p}: its {what} is not what `sdmvae evaluate` writes (a corrupt or edited summary)")

    needed = ("metrics", "model") if s["kind"] == "checkpoint" else ("metrics",)
    for k in ("metrics", "model", "train", "sparsity", "settings", "validation", "versions"):
        if (k in needed or s.get(k) is not None) and not isinstance(s.get(k), dict):
            raise bad(f"{k!r} field")
    for k in ("checkpoint", "prepared_dir", "split", "data_fingerprint", "est_dir"):
        if s.get(k) is not None and not isinstance(s[k], str):
            raise bad(f"{k!r} field")
    for k, d in s["metrics"].items():
        if d is not None and (
            not isinstance(d, dict) or any(d.get(x) is not None and not _number(d[x]) for x in ("mean", "std", "n"))
        ):
            raise bad(f"metric {k!r}")
    sp = s.get("sparsity") or {}
    if any(
        sp.get(k) is not None and not _number(sp[k])
        for k in ("hoyer_pooled", "hoyer_pooled_std", "hoyer_mean", "hoyer_std", "frames")
    ):
        raise bad("'sparsity' field")
    v = s.get("validation") or {}
    if any(v.get(k) is not None and not _number(v[k]) for k in ("total", "median", "posterior_mean", "statistic")):
        raise SdmvaeError(f"{p}: its 'validation' losses are not numbers (a corrupt or edited summary)")
    if s["kind"] == "checkpoint":
        m = s["model"]
        try:  # what the rows are labelled and ordered by (the family's name is not filled in with a default)
            ok = (
                isinstance(m.get("model"), str)
                and isinstance(m["latent"], int)
                and not isinstance(m["latent"], bool)
                and bool(row_label(m))
                and bool(row_key(m))
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            ok = False
        if not ok:
            raise bad("'model' field")


def load_summary(p: Path) -> dict:
    """The content of a summary.json of `sdmvae evaluate`, checked: a missing, unreadable,
    corrupt or hand-edited file is one clear error line."""
    p = Path(p)
    try:
        s = json.loads(p.read_text())
    except FileNotFoundError:
        raise SdmvaeError(f"{p}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise SdmvaeError(f"{p}: not a JSON summary from `sdmvae evaluate`") from None
    if not isinstance(s, dict) or s.get("kind") not in ("checkpoint", "folders") or "metrics" not in s:
        raise SdmvaeError(f"{p}: not a summary.json written by `sdmvae evaluate`")
    _check_fields(p, s)
    return s


@dataclass
class Stat:
    mean: float | None
    std: float | None = None
    n: int = 0


def paper_hoyer(s: dict) -> bool:
    """Whether the summary's ``hoyer`` follows the paper's protocol (every untrimmed frame): the
    evaluations that do record it in ``settings``; older ones averaged over trimmed frames."""
    return "hoyer" in (s.get("settings") or {})


def metric_stat(s: dict, key: str) -> Stat:
    """A metric's mean/std/n over files as the summary records it, older summaries too (a name of
    before: ``pesq`` for PESQ-WB; the pooled Hoyer in ``sparsity``); no mean where it has none."""
    metrics, sp = s.get("metrics", {}), s.get("sparsity") or {}
    if key == "hoyer_pooled":
        st = Stat(
            sp.get("hoyer_pooled", sp.get("hoyer_mean")), sp.get("hoyer_pooled_std", sp.get("hoyer_std")), sp.get("frames", 0)
        )
    else:
        old = METRIC[key].old_key if key in METRIC else None
        d = metrics.get(key) or (metrics.get(old) if old else None)
        st = Stat(d.get("mean"), d.get("std"), d.get("n", 0)) if d else Stat(None)
    return st if st.mean is None or math.isfinite(st.mean) else Stat(None)


def validation_stat(s: dict) -> Stat:
    """What the run was selected by: its early-stopping statistic on validation (`evaluate`
    records it now whatever the statistic; older summaries have the mean, or the median)."""
    v = s.get("validation") or {}
    if "statistic" in v:
        return Stat(v["statistic"])
    return Stat(v.get("median") if v.get("stop_on") == "median" else v.get("total"))


def config_key(s: dict) -> str:
    """THE rule of which checkpoint summaries are seeds of one configuration (module docstring)."""
    m, train = s["model"], s.get("train") or {}
    ident = {
        "model": ModelConfig.completed(m),
        "lr": train.get("lr"),
        "batch_size": train.get("batch_size"),
        "split": s.get("split"),
        "data": current_fingerprint(s.get("data_fingerprint"), s.get("prepared_dir")),
        "stop_on": stop_on_of(train),
    }
    return json.dumps(ident, sort_keys=True)


@dataclass
class RunRow:
    """One evaluation summary, flattened."""

    run: str
    path: str
    label: str
    m: int | None
    seed: int | None
    group: str  # configuration identity without the seed (:func:`config_key`)
    order: tuple
    values: dict[str, Stat] = field(default_factory=dict)  # every metric, and VAL_LOSS
    #: values the summary records under a metric's name by an earlier protocol (an old summary's
    #: Hoyer over trimmed frames): not the metric, so not in ``values``; the report shows them marked
    superseded: dict[str, Stat] = field(default_factory=dict)
    source: dict = field(default_factory=dict, repr=False)  # the summary (its per-file scores are read beside it)

    def recorded(self, key: str) -> Stat:
        """The value the summary records for ``key``, by an earlier protocol too."""
        return self.values[key] if self.values[key].mean is not None else self.superseded.get(key, self.values[key])


def _label(m: dict, train: dict) -> str:
    """The row's label: the model's, with the training options that make another configuration."""
    label, stop_on = row_label(m), stop_on_of(train)
    for note, show in (
        (f"lr={train.get('lr', 1e-4):g}", train.get("lr") not in (None, 1e-4)),
        (f"{stop_on} stop", stop_on != TrainOptions.stop_on),
    ):
        if show:
            label = label[:-1] + f", {note}]" if label.endswith("]") else f"{label} [{note}]"
    return label


def read_summary(p: Path) -> RunRow:
    p = Path(p)
    s = load_summary(p)
    if s["kind"] == "folders":
        label = f"folders: {Path(s.get('est_dir', '?')).name}"
        row = RunRow(_summary_run_name(p), str(p), label, None, None, f"folders:{s.get('est_dir')}", (len(REGISTRY) + 100,))
    else:
        m, train = s["model"], s.get("train") or {}
        row = RunRow(
            _summary_run_name(p), str(p), _label(m, train), int(m["latent"]), train.get("seed"), config_key(s), row_key(m)
        )
    row.values = {mt.key: metric_stat(s, mt.key) for mt in METRICS}
    if not paper_hoyer(s) and row.values["hoyer"].mean is not None:
        row.superseded["hoyer"], row.values["hoyer"] = row.values["hoyer"], Stat(None)
    row.values[VAL_LOSS] = validation_stat(s)
    row.source = s
    return row


def read_summaries(paths: list[Path]) -> list[RunRow]:
    if not paths:
        raise SdmvaeError("no summary.json given")
    return [read_summary(Path(p)) for p in paths]


# -- seeds of one configuration -------------------------------------------------------------------
@dataclass
class Group:
    """Runs of one configuration (all seeds) at one m: mean ± std over seeds."""

    label: str
    m: int | None
    order: tuple
    runs: list[RunRow]
    values: dict[str, Stat]


def group_runs(rows: list[RunRow]) -> list[list[RunRow]]:
    """The rows in configurations (:func:`config_key`), in the order they first occur."""
    by: dict[str, list[RunRow]] = {}
    for r in rows:
        by.setdefault(r.group, []).append(r)
    return list(by.values())


def over_seeds(runs: list[RunRow], key: str, superseded: bool = False) -> Stat:
    """Mean over seeds of the runs' means, the standard deviation over seeds (ddof 1; none for one
    seed) and the number of seeds. ``superseded``: also a value recorded by an earlier protocol."""
    xs = [st.mean for st in (r.recorded(key) if superseded else r.values[key] for r in runs) if st.mean is not None]
    if not xs:
        return Stat(None)
    mu = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - mu) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None
    return Stat(mu, sd, len(xs))


def aggregate(rows: list[RunRow]) -> list[Group]:
    """One :class:`Group` per configuration, every value over its seeds; two configurations with
    one label (e.g. another stop rule) are made distinct (``#2``)."""
    groups = [
        Group(runs[0].label, runs[0].m, runs[0].order, runs, {k: over_seeds(runs, k) for k in runs[0].values})
        for runs in group_runs(rows)
    ]
    seen: dict[tuple, int] = {}
    for g in sorted(groups, key=lambda g: (g.order, g.label)):
        key = (g.label, g.m)
        seen[key] = seen.get(key, 0) + 1
        if seen[key] > 1:
            g.label = f"{g.label} #{seen[key]}"
    return sorted(groups, key=lambda g: (g.order, g.label, g.m or 0))


# -- per_file.csv ---------------------------------------------------------------------------------
def read_per_file(eval_dir: Path) -> list[dict]:
    """per_file.csv of an evaluation; one clear line where it is missing, unreadable or lacks
    the columns every reader needs (a corrupt or edited file)."""
    f = Path(eval_dir) / "per_file.csv"
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


@dataclass
class Scores:
    """One evaluation's per-file scores: utterance id -> {metric: finite value} (a failed file, or a
    metric that failed on it, is absent), and id -> speaker where known."""

    values: dict[str, dict[str, float]]
    speakers: dict[str, str] = field(default_factory=dict)


def read_scores(summary_path: Path, summary: dict, keys: tuple[str, ...]) -> Scores | None:
    """The per-file scores of the evaluation whose summary.json is ``summary_path``, or None where
    there are none to read (a summary copied out of its evaluation folder under another name, or
    no per_file.csv beside it). A per_file.csv that is damaged, or that is not this evaluation's
    (another number of files), is one clear error line."""
    d = Path(summary_path).parent
    if Path(summary_path).name != "summary.json" or not (d / "per_file.csv").is_file():
        return None
    rows = read_per_file(d)
    f = d / "per_file.csv"
    if isinstance(summary.get("files"), int) and len(rows) != summary["files"]:
        raise SdmvaeError(
            f"{f}: {len(rows)} files, but {summary_path} counts {summary['files']}: not this evaluation's per-file scores"
        )
    values: dict[str, dict[str, float]] = {}
    for r in rows:
        if r["id"] in values:
            raise SdmvaeError(f"{f}: utterance {r['id']!r} twice (a corrupt or edited file)")
        values[r["id"]] = {} if r.get("error") else {k: v for k in keys if (v := _cell(f, r, _column(r, k))) is not None}
    speakers = {r["id"]: r["speaker"] for r in rows if r.get("speaker")}
    if len(speakers) < len(values):
        speakers = _manifest_speakers(summary) | speakers
    return Scores(values, speakers)


def _column(row: dict, key: str) -> str:
    """The metric's column in this per_file.csv: its name, or its name of before (``pesq``)."""
    old = METRIC[key].old_key if key in METRIC else None
    return key if key in row or old is None else old


def _cell(f: Path, row: dict, key: str) -> float | None:
    cell = (row.get(key) or "").strip()
    if not cell:
        return None
    try:
        v = float(cell)
    except ValueError:
        raise SdmvaeError(f"{f}: {key} of {row['id']!r} is {cell!r}, not a number (a corrupt or edited file)") from None
    return v if math.isfinite(v) else None


def _manifest_speakers(summary: dict) -> dict[str, str]:
    """id -> speaker from the prepared folder's manifest (older per_file.csv had no speakers);
    empty where that folder is gone."""
    prep, split = summary.get("prepared_dir"), summary.get("split")
    if not prep or not split:
        return {}
    try:
        entries = read_manifest(prep, split)
    except (SdmvaeError, OSError):
        return {}
    return {str(e["id"]): str(e["speaker"]) for e in entries if e.get("speaker")}


# -- hoyer_frames.npy -----------------------------------------------------------------------------
def read_hoyer_frames(eval_dir: Path) -> np.ndarray | None:
    """hoyer_frames.npy of an evaluation (None where there is none): a 1-D array of numbers, or one
    clear line for a file that is not one (it is optional: deleting it leaves the histogram out)."""
    f = Path(eval_dir) / "hoyer_frames.npy"
    if not f.is_file():
        return None
    try:
        h = np.load(f, allow_pickle=False)
    except (ValueError, OSError, EOFError):
        h = None
    if (
        not isinstance(h, np.ndarray)
        or h.ndim != 1
        or not (np.issubdtype(h.dtype, np.integer) or np.issubdtype(h.dtype, np.floating))
    ):
        raise SdmvaeError(
            f"{f}: not the per-frame Hoyer array `sdmvae evaluate` writes (corrupt; delete it to leave the histogram out)"
        )
    return h


def hoyer_label(summary: dict, eval_dir: Path) -> str:
    """A histogram's legend for an evaluation: its run folder or released name (or evaluation
    folder), model, m."""
    ckpt = Path(summary.get("checkpoint") or "")
    run = (run_name(None, ckpt) if ckpt.name else "") or Path(eval_dir).name
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
