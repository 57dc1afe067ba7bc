"""`sdmvae table`: evaluation summaries as a per-run table, or as the paper's Table 1.

Four layouts:
- ``runs`` (default): one row per summary (a run is never merged with another because two runs
  share a configuration), every metric as mean ± std over files. Folder-mode summaries (a
  baseline codec, an oracle) sit in the same table.
- ``table1``: the paper's layout. Rows are model configurations (VAE; VSC with its alpha;
  SDM-VAE with its dictionary and k; ...), columns the latent size m, each with the paper's
  metrics; runs of one configuration that differ only in their seed are aggregated as
  mean ± std over seeds (n = number of seeds).
- ``orderings``: for each m and metric, every pair of configurations (higher mean over seeds
  first) with the paired difference over the same test files, its bootstrap intervals over files
  and over speakers, the sign in each seed and whether the ordering is significant
  (:mod:`sdmvae_cli.evaluation.paired`): a difference of means says nothing about whether it would survive
  other files, speakers or seeds.
- ``paired``: exactly two configurations, B - A on every metric, A the configuration of the
  first summary given (so ``table A/*/summary.json B/*/summary.json --layout paired`` is B - A).
All but ``runs`` place a summary by its configuration and m, so they refuse a folder-mode summary
(one line naming it) rather than drop it unseen. Summaries are read, and grouped into the seeds
of one configuration, by :mod:`sdmvae_cli.evaluation.results` (as `sdmvae report` reads them).

The CSV format is for scripts: every number at full precision (round-trip exact, so a value read
back equals the summary's); the rich and markdown views round (each metric's digits).

Column headers say which numbers are comparable with the paper: ``pesq_nb`` (raw P.862
narrow-band, the paper's PESQ), ``estoi`` (the paper's "STOI" column) and ``hoyer`` (eq. 12,
the paper's protocol). PESQ-WB, STOI, SI-SDR and the pooled-trimmed Hoyer are modern extras.
The last column of the ``runs`` layout is the run's validation loss at the epoch its file holds
(its early-stopping statistic, ``validation.statistic``: older summaries have the mean per-frame
loss, or the median for "[median stop]" runs; a run stopped on another statistic than the default
says which in its label),
the number seeds and settings are chosen by, so a sweep table shows the rule beside the scores.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from sdmvae_cli.core.errors import SdmvaeError, UsageError
from sdmvae_cli.evaluation.metrics import METRICS, PAPER_KEYS
from sdmvae_cli.evaluation.paired import MIN_SEEDS, Paired, paired_difference
from sdmvae_cli.evaluation.results import VAL_LOSS, Group, RunRow, Scores, Stat, aggregate, read_scores, read_summaries

#: the columns: every metric (:data:`sdmvae_cli.evaluation.metrics.METRICS`), then the run's
#: validation loss (the ``runs`` layout)
COLUMN_KEYS: tuple[str, ...] = (*(m.key for m in METRICS), VAL_LOSS)
HEADERS: dict[str, str] = {**{m.key: m.label for m in METRICS}, VAL_LOSS: "val. loss (selection)"}
DECIMALS: dict[str, int] = {**{m.key: m.digits for m in METRICS}, VAL_LOSS: 1}


def fmt_stat(st: Stat, key: str, with_std: bool = True) -> str:
    if st.mean is None:
        return "-"
    d = DECIMALS[key]
    if with_std and st.std is not None:
        return f"{st.mean:.{d}f} ± {st.std:.{d}f}"
    return f"{st.mean:.{d}f}"


# -- per-run layout ---------------------------------------------------------------------------
def render_runs(rows: list[RunRow], fmt: str):
    keys = [k for k in COLUMN_KEYS if any(r.values[k].mean is not None for r in rows)]
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
    body = [
        [
            r.run,
            r.label,
            str(r.m) if r.m is not None else "-",
            str(r.seed) if r.seed is not None else "-",
            *[fmt_stat(r.values[k], k) for k in keys],
        ]
        for r in rows
    ]
    return _render_grid(head, body, fmt, "Evaluation summaries (mean ± std over files)", n_left=2)


# -- the paper's Table 1 layout ----------------------------------------------------------------
def refuse_folder_summaries(rows: list[RunRow], layout: str) -> None:
    """The table1, orderings and paired layouts place a summary by its model configuration and m; a
    folder-mode summary (`evaluate --ref/--est`: a baseline codec, an oracle) has neither, and a
    row of its own would sit under no m column. Dropping it silently hid an input, so it is
    refused, naming the file; the runs layout shows it beside the models."""
    for r in rows:
        if r.m is None:  # only folder-mode summaries have no latent size
            raise UsageError(
                f"{r.path}: a folder-mode summary (`evaluate --ref/--est`, no model) has no configuration "
                f"or m for the {layout} layout; leave it out, or show it with --layout runs"
            )


def render_table1(rows: list[RunRow], fmt: str, keys: tuple[str, ...] = PAPER_KEYS):
    refuse_folder_summaries(rows, "table1")
    groups = aggregate(rows)
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


# -- paired statistics: every ordering with its intervals, or two configurations ------------------
#: the metrics compared: those whose value is a mean over files (the paper's three, then the modern ones)
ORDER_KEYS = tuple(m.key for m in METRICS if m.over_files)
#: the CSV columns of a paired comparison (after the columns naming the configurations)
PAIRED_CSV = (
    "diff",
    "files",
    "files_left_out",
    "file_ci_low",
    "file_ci_high",
    "speakers",
    "speaker_diff",
    "speaker_ci_low",
    "speaker_ci_high",
    "seeds",
    "seed_signs",
    "seed_diffs",
    "significant",
)


@dataclass
class Comparison:
    """``b`` - ``a`` on metric ``key`` (in the orderings layout ``b`` is the configuration with the
    higher mean over seeds), with its paired statistics."""

    key: str
    a: Group
    b: Group
    stats: Paired

    @property
    def holds(self) -> int:
        """Paired seeds in which b scores above a."""
        return sum(1 for d in self.stats.seed_diffs if d > 0)

    @property
    def every_seed(self) -> bool:
        """b above a in every paired seed (at least two): the ordering survives retraining."""
        return len(self.stats.seeds) >= MIN_SEEDS and self.holds == len(self.stats.seeds)


def comparable_groups(rows: list[RunRow], layout: str) -> list[Group]:
    """The configurations of summaries that can be paired: checkpoint summaries of one split of
    one prepared dataset, each seed of a configuration once (else seeds or files would be paired
    with another dataset's, or a run counted twice)."""
    refuse_folder_summaries(rows, layout)
    sources = {tuple(json.loads(r.group).get(k) for k in ("split", "data")) for r in rows}
    if len(sources) > 1:
        raise SdmvaeError(
            f"the {layout} layout needs summaries of one split of one prepared dataset; got "
            + ", ".join(sorted(f"{sp} split of data {fp}" for sp, fp in sources))
        )
    groups = aggregate(rows)
    for g in groups:
        seeds = [r.seed for r in g.runs if r.seed is not None]
        if len(seeds) != len(set(seeds)):
            raise SdmvaeError(
                f"{g.label} (m={g.m}) has two summaries of one seed ({', '.join(r.path for r in g.runs)}); give each run once"
            )
    return groups


class PerFile:
    """Each run's per-file scores, read once per table (a run is in many pairs)."""

    def __init__(self, keys: tuple[str, ...]):
        self.keys = keys
        self.read: dict[str, Scores | None] = {}

    def of(self, g: Group) -> dict[int, Scores | None]:
        for r in g.runs:
            if r.path not in self.read:
                self.read[r.path] = read_scores(Path(r.path), r.source, self.keys)
        return {r.seed: self.read[r.path] for r in g.runs if r.seed is not None}

    def missing(self) -> list[str]:
        return [p for p, s in self.read.items() if s is None]


def compare(a: Group, b: Group, key: str, per_file: PerFile) -> Comparison:
    def means(g: Group) -> dict[int, float | None]:
        return {r.seed: r.values[key].mean for r in g.runs if r.seed is not None}

    return Comparison(key, a, b, paired_difference(key, per_file.of(a), per_file.of(b), means(a), means(b)))


def ordering_pairs(rows: list[RunRow], keys: tuple[str, ...] = ORDER_KEYS, per_file: PerFile | None = None) -> list[Comparison]:
    """For each m and metric, every pair of configurations, higher mean over seeds first, with the
    paired difference higher - lower (seeds of each pair matched by number)."""
    groups = comparable_groups(rows, "orderings")
    per_file = per_file or PerFile(keys)
    out = []
    for m in sorted({g.m for g in groups}):
        for key in keys:
            ranked = sorted((g for g in groups if g.m == m and g.values[key].mean is not None), key=lambda g: -g.values[key].mean)
            out += [compare(lo, hi, key, per_file) for i, hi in enumerate(ranked) for lo in ranked[i + 1 :]]
    return out


def paired_configurations(
    rows: list[RunRow], keys: tuple[str, ...] = ORDER_KEYS, per_file: PerFile | None = None
) -> list[Comparison]:
    """Exactly two configurations, B - A on each metric, A the configuration of the first summary
    given (``table A/*/summary.json B/*/summary.json --layout paired``: B - A)."""
    groups = comparable_groups(rows, "paired")
    if len(groups) != 2:
        raise UsageError(
            f"the paired layout compares exactly two configurations; got {len(groups)} "
            f"({'; '.join(f'{g.label} m={g.m}' for g in groups)}); use --layout orderings for every pair"
        )
    a, b = sorted(groups, key=lambda g: min(rows.index(r) for r in g.runs))
    per_file = per_file or PerFile(keys)
    return [compare(a, b, k, per_file) for k in keys if a.values[k].mean is not None and b.values[k].mean is not None]


def _paired_csv(st: Paired) -> list:
    fci, sci = st.file_ci or (None, None), st.speaker_ci or (None, None)
    return [
        _num(st.diff),
        st.files,
        st.left_out,
        _num(fci[0]),
        _num(fci[1]),
        st.speakers,
        _num(st.speaker_diff),
        _num(sci[0]),
        _num(sci[1]),
        " ".join(map(str, st.seeds)),
        st.signs,
        " ".join(_num(d) for d in st.seed_diffs),
        int(st.significant),
    ]


def _paired_cells(st: Paired) -> list[str]:
    """The people's view of a comparison: difference, the two intervals with their n, seed signs,
    files left out, significance."""
    d = DECIMALS[st.key] + 1

    def ci(c: tuple[float, float] | None, n: int) -> str:
        return f"[{c[0]:+.{d}f}, {c[1]:+.{d}f}] n={n}" if c is not None else "-"

    return [
        f"{st.diff:+.{d}f}" if st.diff is not None else "-",
        ci(st.file_ci, st.files),
        ci(st.speaker_ci, st.speakers),
        st.signs or "-",
        str(st.left_out) if st.files or st.left_out else "-",
        "yes" if st.significant else "no",
    ]


PAIRED_HEAD = ["95% CI over files", "95% CI over speakers", "seed signs", "files left out", "significant"]
PAIRED_RULE = (
    "95 % bootstrap intervals (BCa) of the mean paired difference over files and over speakers; "
    "significant: both exclude 0 and every seed (at least 2, matched by number) has its sign"
)


def _missing_note(per_file: PerFile) -> str | None:
    gone = per_file.missing()
    if not gone:
        return None
    return (
        f"no per-file scores (per_file.csv beside summary.json) for {len(gone)} summaries ({', '.join(gone[:3])}"
        f"{', ...' if len(gone) > 3 else ''}): their comparisons have seed signs from the summaries, no intervals"
    )


def render_orderings(rows: list[RunRow], fmt: str):
    per_file = PerFile(ORDER_KEYS)
    pairs = ordering_pairs(rows, per_file=per_file)
    if not pairs:
        raise SdmvaeError("the orderings layout needs checkpoint summaries of at least two configurations at one m")
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(
            [
                "m",
                "metric",
                "higher",
                "lower",
                "higher_mean",
                "lower_mean",
                "seeds_holding",
                "seeds_paired",
                "every_seed",
                *PAIRED_CSV,
            ]
        )
        for c in pairs:
            w.writerow(
                [
                    c.b.m,
                    c.key,
                    c.b.label,
                    c.a.label,
                    _num(c.b.values[c.key].mean),
                    _num(c.a.values[c.key].mean),
                    c.holds,
                    len(c.stats.seeds),
                    int(c.every_seed),
                    *_paired_csv(c.stats),
                ]
            )
        return buf.getvalue()
    body = [[str(c.b.m), HEADERS[c.key], _cell(c.b, c.key), _cell(c.a, c.key), *_paired_cells(c.stats)] for c in pairs]
    return _render_grid(
        ["m", "metric", "higher (mean over seeds)", "lower", "higher - lower", *PAIRED_HEAD],
        body,
        fmt,
        f"Every ordering, paired over files: {PAIRED_RULE}",
        n_left=4,
        note=_missing_note(per_file),
    )


def render_paired(rows: list[RunRow], fmt: str):
    per_file = PerFile(ORDER_KEYS)
    pairs = paired_configurations(rows, per_file=per_file)
    if not pairs:
        raise SdmvaeError("the two configurations share no metric")
    a, b = pairs[0].a, pairs[0].b
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["metric", "a", "b", "a_m", "b_m", "a_mean", "b_mean", *PAIRED_CSV])
        for c in pairs:
            w.writerow([c.key, a.label, b.label, a.m, b.m, _num(c.stats.a_mean), _num(c.stats.b_mean), *_paired_csv(c.stats)])
        return buf.getvalue()

    def mean(v: float | None, key: str) -> str:
        return "-" if v is None else f"{v:.{DECIMALS[key]}f}"

    body = [[HEADERS[c.key], mean(c.stats.a_mean, c.key), mean(c.stats.b_mean, c.key), *_paired_cells(c.stats)] for c in pairs]
    return _render_grid(
        ["metric", f"A: {a.label} m={a.m}", f"B: {b.label} m={b.m}", "B - A", *PAIRED_HEAD],
        body,
        fmt,
        f"B - A on the same files (means over the paired files and seeds): {PAIRED_RULE}",
        n_left=1,
        note=_missing_note(per_file),
    )


def _cell(g: Group, key: str) -> str:
    return f"{g.label} {fmt_stat(g.values[key], key, with_std=False)}"


def _num(v: float | None) -> str:
    """A CSV cell: the full-precision (round-trip exact) number, for scripts; rounding belongs to
    the views people read (rich, markdown), where DECIMALS applies."""
    return "" if v is None else repr(float(v))


def _render_grid(head: list[str], body: list[list[str]], fmt: str, title: str, n_left: int, note: str | None = None):
    """A table for people; ``note``: what a reader must know about the numbers (below the table)."""
    if fmt == "markdown":
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i < n_left else "---:" for i in range(len(head))) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines) + "\n" + (f"\n{note}\n" if note else "")
    if fmt == "rich":
        rt = Table(title=title, caption=note)
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
    if layout == "paired":
        return render_paired(rows, fmt)
    raise SdmvaeError(f"unknown layout {layout!r}; expected runs, table1, orderings or paired")
