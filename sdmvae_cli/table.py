"""`sdmvae table`: evaluation summaries as a per-run table, or as the paper's Table 1.

Two layouts:
- ``runs`` (default): one row per summary (a run is never merged with another because two runs
  share a configuration), every metric as mean ± std over files. Folder-mode summaries (a
  baseline codec, an oracle) sit in the same table.
- ``table1``: the paper's layout. Rows are model configurations (VAE; VSC with its alpha;
  SDM-VAE with its dictionary and k; ...), columns the latent size m, each with the paper's
  metrics; runs of one configuration that differ only in their seed are aggregated as
  mean ± std over seeds (n = number of seeds).
- ``orderings``: for each m and metric, the configurations ranked by their mean over seeds,
  and for each neighbouring pair whether the order holds for every seed (seeds matched by
  number), so a reader sees which differences are larger than the seed noise.

Column headers say which numbers are comparable with the paper: ``pesq_nb`` (raw P.862
narrow-band, the paper's PESQ), ``estoi`` (the paper's "STOI" column) and ``hoyer`` (eq. 12,
the paper's protocol). PESQ-WB, STOI, SI-SDR and the pooled-trimmed Hoyer are modern extras.
The last column of the ``runs`` layout is the run's validation loss at the epoch its file holds
(its early-stopping statistic: the mean per-frame loss, or the median for "[median stop]" runs),
the number seeds and settings are chosen by, so a sweep table shows the rule beside the scores.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdmvae_cli.errors import SdmvaeError
from sdmvae_cli.prepare import current_fingerprint

#: (key, header, decimals); paper-comparable first
COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("pesq_nb", "PESQ P.862 raw (paper)", 2),
    ("estoi", "ESTOI (paper's STOI)", 3),
    ("hoyer", "Hoyer (paper protocol)", 3),
    ("pesq_wb", "PESQ-WB", 2),
    ("stoi", "STOI", 3),
    ("si_sdr", "SI-SDR dB", 1),
    ("hoyer_pooled", "Hoyer pooled-trimmed", 3),
    ("val_loss", "val. loss (selection)", 1),
)
PAPER_KEYS = ("pesq_nb", "estoi", "hoyer")
HEADERS = {k: h for k, h, _ in COLUMNS}
DECIMALS = {k: d for k, _, d in COLUMNS}


def row_label(m: dict) -> str:
    name = m["model"]
    if name == "vae":
        label = "VAE"
    elif name == "vsc":
        label = f"VSC (alpha={m['alpha']:g})"
    elif name == "sdm":
        if m["dictionary"] == "identity":
            label = "SDM-VAE (identity)"
        elif m["dictionary"] == "learned":
            label = f"SDM-VAE (learned, k={m['k']})"
        else:
            label = f"SDM-VAE (DCT, k={m['k']})"
    elif name == "threshold":
        lam = (f"learned lambda, Gamma({m['gamma_shape']:g}, {m['gamma_rate']:g}) prior" if m["learn_threshold"]
               else f"lambda={m['threshold']:g}")
        extra = f", J={m['samples']}" if m.get("samples", 1) > 1 else ""
        label = f"Thresholded ({m['base']}, {lam}{extra})"
    elif name == "laplace":
        label = "Laplace-prior VAE"
    elif name == "cauchy":
        label = "Cauchy VAE"
    else:
        label = name
    notes = []
    if m.get("beta", 1.0) != 1.0:
        notes.append(f"beta={m['beta']:g}")
    if m.get("input_transform", "log") != "log":
        notes.append(f"{m['input_transform']} input")
    return label + (f" [{', '.join(notes)}]" if notes else "")


MODEL_ORDER = ("vae", "vsc", "sdm", "threshold", "laplace", "cauchy")
DICT_ORDER = ("identity", "dct", "learned")


def row_key(m: dict) -> tuple:
    """The paper's row order: VAE, VSC by alpha, SDM-VAE identity then DCT by k, then the others."""
    name = m["model"]
    rank = MODEL_ORDER.index(name) if name in MODEL_ORDER else len(MODEL_ORDER)
    if name == "vsc":
        return (rank, m["alpha"])
    if name == "sdm":
        return (rank, DICT_ORDER.index(m["dictionary"]) if m["dictionary"] in DICT_ORDER else 9, m["k"])
    if name == "threshold":
        return (rank, m["learn_threshold"], m["base"], m["threshold"])
    return (rank,)


@dataclass
class Stat:
    mean: float | None
    std: float | None = None
    n: int = 0


@dataclass
class RunRow:
    """One evaluation summary, flattened."""

    run: str
    path: str
    label: str
    m: int | None
    seed: int | None
    group: str  # configuration identity without the seed (for aggregation over seeds)
    order: tuple
    values: dict[str, Stat] = field(default_factory=dict)


def _metric(s: dict, key: str) -> Stat:
    """A metric's mean/std over files, reading old summaries too (``pesq`` = PESQ-WB there)."""
    metrics, sp = s.get("metrics", {}), s.get("sparsity") or {}
    if key == "val_loss":  # what the run was selected by: its early-stopping statistic on validation
        v = s.get("validation") or {}
        return Stat(v.get("median") if v.get("stop_on") == "median" else v.get("total"))
    if key == "hoyer_pooled":
        v = sp.get("hoyer_pooled", sp.get("hoyer_mean"))
        return Stat(v, sp.get("hoyer_pooled_std", sp.get("hoyer_std")), sp.get("frames", 0))
    if key == "hoyer" and "hoyer" not in s.get("settings", {}):
        return Stat(None)  # an old summary's per-file Hoyer was over trimmed frames: not the paper's
    d = metrics.get(key) or (metrics.get("pesq") if key == "pesq_wb" else None)
    if not d:
        return Stat(None)
    return Stat(d.get("mean"), d.get("std"), d.get("n", 0))


def _run_name(p: Path) -> str:
    """The run folder's name (``runs/x/eval-test/summary.json`` -> x); a renamed summary's stem."""
    if p.name != "summary.json":
        return p.stem
    parent = p.parent
    if parent.name.startswith("eval-") and parent.parent.name:
        return parent.parent.name
    return parent.name or str(p)


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
        if d is not None and (not isinstance(d, dict) or any(d.get(x) is not None and not _number(d[x]) for x in ("mean", "std", "n"))):
            raise bad(f"metric {k!r}")
    sp = s.get("sparsity") or {}
    if any(sp.get(k) is not None and not _number(sp[k]) for k in ("hoyer_pooled", "hoyer_pooled_std", "hoyer_mean", "hoyer_std", "frames")):
        raise bad("'sparsity' field")
    v = s.get("validation") or {}
    if any(v.get(k) is not None and not _number(v[k]) for k in ("total", "median")):
        raise SdmvaeError(f"{p}: its 'validation' losses are not numbers (a corrupt or edited summary)")
    if s["kind"] == "checkpoint":
        m = s["model"]
        try:  # what the rows are labelled and ordered by
            ok = isinstance(m["latent"], int) and not isinstance(m["latent"], bool) and bool(row_label(m)) and bool(row_key(m))
        except (KeyError, TypeError, ValueError, AttributeError):
            ok = False
        if not ok:
            raise bad("'model' field")


def load_summary(p: Path) -> dict:
    """The content of a summary.json of `sdmvae evaluate`, checked (also read so by `sdmvae
    report`): a missing, unreadable, corrupt or hand-edited file is one clear error line."""
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


def read_summary(p: Path) -> RunRow:
    p = Path(p)
    s = load_summary(p)
    if s["kind"] == "folders":
        label = f"folders: {Path(s.get('est_dir', '?')).name}"
        row = RunRow(_run_name(p), str(p), label, None, None, f"folders:{s.get('est_dir')}", (len(MODEL_ORDER) + 1,))
    else:
        m = s["model"]
        train = s.get("train") or {}
        stop_on = train.get("stop_on", "mean")
        ident = {"model": m, "lr": train.get("lr"), "batch_size": train.get("batch_size"), "split": s.get("split"),
                 "data": current_fingerprint(s.get("data_fingerprint"), s.get("prepared_dir")), "stop_on": stop_on}
        label = row_label(m)
        for note, show in ((f"lr={train.get('lr', 1e-4):g}", train.get("lr") not in (None, 1e-4)), ("median stop", stop_on != "mean")):
            if show:
                label = label[:-1] + f", {note}]" if label.endswith("]") else f"{label} [{note}]"
        row = RunRow(_run_name(p), str(p), label, int(m["latent"]), train.get("seed"),
                     json.dumps(ident, sort_keys=True), row_key(m))
    row.values = {k: _metric(s, k) for k, _, _ in COLUMNS}
    return row


def read_summaries(paths: list[Path]) -> list[RunRow]:
    if not paths:
        raise SdmvaeError("no summary.json given")
    return [read_summary(Path(p)) for p in paths]


@dataclass
class Group:
    """Runs of one configuration (all seeds) at one m: mean ± std over seeds."""

    label: str
    m: int | None
    order: tuple
    runs: list[RunRow]
    values: dict[str, Stat]


def aggregate(rows: list[RunRow]) -> list[Group]:
    by: dict[str, list[RunRow]] = {}
    for r in rows:
        by.setdefault(r.group, []).append(r)
    groups = []
    for runs in by.values():
        vals = {}
        for k, _, _ in COLUMNS:
            xs = [r.values[k].mean for r in runs if r.values[k].mean is not None]
            if xs:
                mu = sum(xs) / len(xs)
                sd = math.sqrt(sum((x - mu) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None
                vals[k] = Stat(mu, sd, len(xs))
            else:
                vals[k] = Stat(None)
        groups.append(Group(runs[0].label, runs[0].m, runs[0].order, runs, vals))
    # two configurations with one label (e.g. another lr): make the labels distinct
    seen: dict[tuple, int] = {}
    for g in sorted(groups, key=lambda g: (g.order, g.label)):
        key = (g.label, g.m)
        seen[key] = seen.get(key, 0) + 1
        if seen[key] > 1:
            g.label = f"{g.label} #{seen[key]}"
    return sorted(groups, key=lambda g: (g.order, g.label, g.m or 0))


def fmt_stat(st: Stat, key: str, with_std: bool = True) -> str:
    if st.mean is None:
        return "-"
    d = DECIMALS[key]
    if with_std and st.std is not None:
        return f"{st.mean:.{d}f} ± {st.std:.{d}f}"
    return f"{st.mean:.{d}f}"


# -- per-run layout ---------------------------------------------------------------------------
def render_runs(rows: list[RunRow], fmt: str):
    keys = [k for k, _, _ in COLUMNS if any(r.values[k].mean is not None for r in rows)]
    rows = sorted(rows, key=lambda r: (r.order, r.label, r.m or 0, r.seed if r.seed is not None else -1, r.run))
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["run", "path", "model", "m", "seed", *[f"{k}{s}" for k in keys for s in ("", "_std", "_n")]])
        for r in rows:
            cells = []
            for k in keys:
                st = r.values[k]
                cells += [_num(st.mean), _num(st.std), st.n]
            w.writerow([r.run, r.path, r.label, r.m if r.m is not None else "", r.seed if r.seed is not None else "", *cells])
        return buf.getvalue()
    head = ["run", "model", "m", "seed", *[HEADERS[k] for k in keys]]
    body = [[r.run, r.label, str(r.m) if r.m is not None else "-", str(r.seed) if r.seed is not None else "-",
             *[fmt_stat(r.values[k], k) for k in keys]] for r in rows]
    return _render_grid(head, body, fmt, "Evaluation summaries (mean ± std over files)", n_left=2)


# -- the paper's Table 1 layout ----------------------------------------------------------------
def render_table1(rows: list[RunRow], fmt: str, keys: tuple[str, ...] = PAPER_KEYS):
    groups = [g for g in aggregate(rows) if g.m is not None]
    if not groups:
        raise SdmvaeError("the table1 layout needs checkpoint summaries (`sdmvae evaluate CKPT PREPARED_DIR`)")
    ms = sorted({g.m for g in groups if g.m is not None})
    labels: list[str] = []
    for g in groups:
        if g.label not in labels:
            labels.append(g.label)
    cell = {(g.label, g.m): g for g in groups}
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["model", "m", "seeds", *[f"{k}{s}" for k in keys for s in ("", "_std")]])
        for g in groups:
            w.writerow([g.label, g.m, len(g.runs), *[x for k in keys for x in (_num(g.values[k].mean), _num(g.values[k].std))]])
        return buf.getvalue()
    head = ["model", *[f"m={m} {HEADERS[k]}" for m in ms for k in keys], "seeds"]
    body = []
    for lab in labels:
        vals = [fmt_stat(cell[(lab, m)].values[k], k) if (lab, m) in cell else "-" for m in ms for k in keys]
        seeds = "/".join(str(len(cell[(lab, m)].runs)) if (lab, m) in cell else "-" for m in ms)
        body.append([lab, *vals, seeds])
    return _render_grid(head, body, fmt, "Table 1: mean ± std over seeds (seeds per m in the last column)", n_left=1)


# -- which orderings hold for every seed --------------------------------------------------------
ORDER_KEYS = PAPER_KEYS + ("pesq_wb",)


@dataclass
class Step:
    """One link of an ordering chain: ``higher`` scores above ``lower`` in ``holds`` of the
    ``paired`` seeds both configurations were run with (matched by seed number)."""

    m: int
    key: str
    higher: Group
    lower: Group
    holds: int
    paired: int

    @property
    def every_seed(self) -> bool:
        return self.paired >= 2 and self.holds == self.paired


def ordering_steps(rows: list[RunRow], keys: tuple[str, ...] = ORDER_KEYS) -> list[Step]:
    """For each m and metric, configurations sorted by their mean over seeds, and for each
    neighbouring pair the number of seeds in which the order holds. Seeds are matched by number
    over the seeds that EVERY ranked configuration has, so a chain of links that hold for every
    seed holds end to end (per seed, > is transitive). Summaries of another split or other
    prepared data, and a seed repeated within a configuration, are refused: they would be ranked
    as if they were seeds or configurations."""
    checkpoint_rows = [r for r in rows if r.m is not None]
    sources = {tuple(json.loads(r.group).get(k) for k in ("split", "data")) for r in checkpoint_rows}
    if len(sources) > 1:
        raise SdmvaeError("the orderings layout needs summaries of one split of one prepared dataset; got "
                          + ", ".join(sorted(f"{sp} split of data {fp}" for sp, fp in sources)))
    steps = []
    groups = aggregate(checkpoint_rows)
    for g in groups:
        seeds = [r.seed for r in g.runs if r.seed is not None]
        if len(seeds) != len(set(seeds)):
            raise SdmvaeError(f"{g.label} (m={g.m}) has two summaries of one seed ({', '.join(r.path for r in g.runs)}); "
                              "give each run once")
    for m in sorted({g.m for g in groups}):
        for key in keys:
            ranked = sorted((g for g in groups if g.m == m and g.values[key].mean is not None), key=lambda g: -g.values[key].mean)
            per = [{r.seed: r.values[key].mean for r in g.runs if r.seed is not None and r.values[key].mean is not None} for g in ranked]
            common = sorted(set.intersection(*(set(p) for p in per))) if per else []
            for (hi, a), (lo, b) in zip(zip(ranked, per), zip(ranked[1:], per[1:])):
                steps.append(Step(m, key, hi, lo, sum(a[s] > b[s] for s in common), len(common)))
    return steps


def render_orderings(rows: list[RunRow], fmt: str):
    steps = ordering_steps(rows)
    if not steps:
        raise SdmvaeError("the orderings layout needs checkpoint summaries of at least two configurations at one m")
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["m", "metric", "higher", "lower", "higher_mean", "lower_mean", "seeds_holding", "seeds_paired", "every_seed"])
        for st in steps:
            w.writerow([st.m, st.key, st.higher.label, st.lower.label, _num(st.higher.values[st.key].mean),
                        _num(st.lower.values[st.key].mean), st.holds, st.paired, int(st.every_seed)])
        return buf.getvalue()
    body = []
    for (m, key) in dict.fromkeys((st.m, st.key) for st in steps):
        chain = [st for st in steps if (st.m, st.key) == (m, key)]
        text = _cell(chain[0].higher, key)
        for st in chain:
            text += f" {'>' if st.every_seed else '~'} ({st.holds}/{st.paired}) " + _cell(st.lower, key)
        body.append([str(m), HEADERS[key], text])
    return _render_grid(["m", "metric", "configurations by mean; '>' holds for every seed, '~' not (seeds holding/paired)"],
                        body, fmt, "Which orderings hold for every seed", n_left=3)


def _cell(g: Group, key: str) -> str:
    return f"{g.label} {fmt_stat(g.values[key], key, with_std=False)}"


def _num(v: float | None) -> str:
    return "" if v is None else f"{v:.6g}"


def _render_grid(head: list[str], body: list[list[str]], fmt: str, title: str, n_left: int):
    if fmt == "markdown":
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i < n_left else "---:" for i in range(len(head))) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines) + "\n"
    if fmt == "rich":
        from rich.table import Table

        rt = Table(title=title)
        for i, h in enumerate(head):
            rt.add_column(h.replace(" (", "\n("), justify="left" if i < n_left else "right")
        for row in body:
            rt.add_row(*row)
        return rt
    raise SdmvaeError(f"unknown table format {fmt!r}; expected rich, markdown or csv")


def render(paths: list[Path], fmt: str = "rich", layout: str = "runs") -> Any:
    """Read summaries and render them (a str for markdown/csv, a rich Table for rich)."""
    rows = read_summaries(paths)
    if layout == "runs":
        return render_runs(rows, fmt)
    if layout == "table1":
        return render_table1(rows, fmt)
    if layout == "orderings":
        return render_orderings(rows, fmt)
    raise SdmvaeError(f"unknown layout {layout!r}; expected runs, table1 or orderings")
