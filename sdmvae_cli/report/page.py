"""`sdmvae report`: a static listening page for evaluated runs (index.html + assets).

Why: a number such as PESQ only earns trust once the speech has been heard. The page puts, for
N test utterances, the input and every model's resynthesis side by side (players and
spectrograms), above the results table (the paper's metrics and the modern ones, mean +- std
over seeds) and, per model, its latent codes, Hoyer histogram and loss curves.

Three steps, each a plain function: :func:`~sdmvae_cli.report.inputs.collect_runs` reads
evaluation outputs (or run directories), :func:`~sdmvae_cli.report.assets.write_assets`
resynthesises the chosen utterances from the checkpoints and writes the assets, :func:`build_page`
computes the page model and :func:`render` fills the Jinja2 template. The results table has the
rows and numbers of ``sdmvae table --layout table1`` (one reader, one rule of which runs are seeds
of one configuration: :mod:`sdmvae_cli.evaluation.results`). The folder is self-contained:
relative links only, no script or style from the network, so it opens from ``file://``. It is
written beside its destination and renamed into place when complete.
"""

from __future__ import annotations

import glob
import logging
import os
import platform
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import jinja2

from sdmvae_cli.core.atomic import write_json, write_text
from sdmvae_cli.core.errors import SdmvaeError
from sdmvae_cli.core.lock import claim_folder, lock_scope
from sdmvae_cli.core.outputs import is_within
from sdmvae_cli.core.version import __version__
from sdmvae_cli.evaluation.evaluate import package_version
from sdmvae_cli.evaluation.metrics import METRICS, Metric
from sdmvae_cli.evaluation.results import RunRow, group_runs, over_seeds
from sdmvae_cli.report.assets import Assets, write_assets
from sdmvae_cli.report.inputs import Run, choose_utterances, collect_runs, data_sources

log = logging.getLogger("sdmvae")


# -- the results table ------------------------------------------------------------------------
def _group(m: Metric) -> str:
    """The column group of a metric: "paper" (Table 1 of the paper) or "modern"."""
    return "paper" if m.paper else "modern"


def _fmt(v: float, digits: int) -> str:
    return f"{v:.{digits}f}".replace("-", "\u2212")


def _cell(m: Metric, rows: list[RunRow]) -> dict:
    """One metric of one configuration: mean ± std over seeds (an old summary's Hoyer, recorded by
    an earlier protocol, is shown marked: ``old``); the title says over what."""
    st = over_seeds(rows, m.key, superseded=True)
    if st.mean is None:
        return {
            "key": m.key,
            "mean": None,
            "std": None,
            "n": 0,
            "text": "\u2013",
            "title": "not in these summaries",
            "old": False,
        }
    text = _fmt(st.mean, m.digits) + ("" if st.std is None else f" \u00b1 {_fmt(st.std, m.digits)}")
    if st.std is not None:
        title = f"mean \u00b1 std over {st.n} seeds"
    else:
        one = next(r.recorded(m.key) for r in rows if r.recorded(m.key).mean is not None)
        title = f"one run; over files: std {one.std:.3g}, n={one.n}" if one.std is not None else "one run"
    return {
        "key": m.key,
        "mean": st.mean,
        "std": st.std,
        "n": st.n,
        "text": text,
        "title": title,
        "old": any(m.key in r.superseded for r in rows),
    }


def table_rows(runs: Sequence[Run]) -> list[dict]:
    """One row per configuration (the runs that are seeds of one, as `sdmvae table` groups them):
    per metric the mean over seeds of the runs' means, the standard deviation over seeds (ddof=1;
    none for a single seed) and the number of seeds."""
    run_of = {id(r.row): r for r in runs}
    rows = []
    for group in group_runs([r.row for r in runs]):
        members = [run_of[id(row)] for row in group]
        first = members[0]
        rows.append(
            {
                "label": first.model_name,
                "latent": int(first.summary["model"]["latent"]),
                "seeds": [r.seed for r in members],
                "models": [r.slug for r in members],
                "order": list(first.row.order) + [int(first.summary["model"]["latent"])],
                "cells": [_cell(m, group) for m in METRICS],
            }
        )
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


# -- environment ------------------------------------------------------------------------------
def environment() -> dict[str, str]:
    """Versions of what built the page (the evaluations record their own)."""
    env = {"sdmvae": __version__, "python": platform.python_version()}
    for name in ("torch", "numpy", "pesq", "pystoi", "librosa", "soundfile", "matplotlib", "Jinja2"):
        env[name.lower()] = package_version(name)
    return env


# -- page ---------------------------------------------------------------------------------------
def utterance_shortfall(runs: Sequence[Run], asked: int, shown: int) -> str | None:
    """Why the page shows fewer utterances than --utterances asked for (None when it does not):
    only utterances scored by every model are shown. Said on stderr and on the page, where a
    quiet shortfall (3 asked, 1 shown) looked like a bug."""
    if shown >= asked:
        return None
    per = ", ".join(f"{r.slug} {sum(not row.get('error') for row in r.rows)} of {len(r.rows)}" for r in runs)
    return (
        f"--utterances {asked} asked for, {shown} shown: only {shown} test utterance{'s' if shown != 1 else ''} "
        f"{'were' if shown != 1 else 'was'} scored by every model (scored: {per})"
    )


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
        "metrics": [{"key": m.key, "label": m.label, "group": _group(m)} for m in METRICS],
        "groups": [{"name": g, "span": sum(_group(m) == g for m in METRICS)} for g in ("paper", "modern")],
        "table": table_rows(runs),
        "old_summaries": any(r.row.superseded for r in runs),
        "utterances": assets.utterances,
        "utterance_note": utterance_note,
        "models": assets.models,
        "overview": assets.overview,
        "codes_vmax": assets.codes_vmax,
    }


def render(page: dict) -> str:
    """index.html from the packaged template (autoescaped)."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("sdmvae_cli.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.get_template("report.html.j2").render(page=page)


MARKER = "report.json"


@lock_scope
def make_report(
    paths: Sequence[str | Path],
    out: str | Path,
    n_utterances: int = 3,
    force: bool = False,
    progress_factory: Callable[[int], Any] | None = None,
    now: datetime | None = None,
) -> Path:
    """Write the report folder ``out`` (index.html, report.json, audio/, img/, models/).

    Built in a temporary sibling and renamed into place: an interrupted build leaves nothing
    that looks complete. An existing ``out`` is replaced only with ``force`` and only if it is
    an earlier report (it holds report.json), never another folder.
    """
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
