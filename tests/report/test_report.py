"""`sdmvae report`: the page's links resolve, its audio decodes, its table equals the summaries.

The synthetic part needs nothing but the released checkpoints (models/): evaluation summaries
are written by hand around synthetic audio, two of them differing only in the seed. The real
part prepares and evaluates a few utterances of ../shared/data/dev (skipped where absent).
The browser check runs headless Chromium where it is installed (skipped otherwise).
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
import soundfile as sf
from conftest import DEV, MODEL_CFG, REPO, fake_eval, made_up_history, needs_shared, write_wav

from sdmvae_cli.core.errors import SdmvaeError
from sdmvae_cli.evaluation.metrics import METRICS
from sdmvae_cli.evaluation.results import metric_stat
from sdmvae_cli.report.page import make_report
from sdmvae_cli.training.run_folder import write_history


class Page(HTMLParser):
    """The parts of index.html the checks need: links, tags with attributes, table cells."""

    def __init__(self, html: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.ids: set[str] = set()
        self.rows: list[dict] = []  # {"models": [...], "cells": {key: value or None}}
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "tr" and "data-models" in a:
            self.rows.append({"models": a["data-models"].split(), "cells": {}})
        if tag == "td" and "data-key" in a:
            self.rows[-1]["cells"][a["data-key"]] = float(a["data-value"]) if a["data-value"] else None

    def links(self) -> list[str]:
        return [a[k] for _, a in self.tags for k in ("href", "src") if k in a]


def check_page(out: Path) -> Page:
    """Every link is relative and resolves inside the folder; every audio file decodes as
    16-bit and is not silent; images have alt text, players labels, header cells a scope."""
    html = (out / "index.html").read_text()
    page = Page(html)
    assert page.links()
    for link in page.links():
        u = urlparse(link)
        assert not u.scheme and not u.netloc and not link.startswith("/"), f"not a relative link: {link}"
        if link.startswith("#"):
            assert link[1:] in page.ids, link
            continue
        target = (out / unquote(u.path)).resolve()
        assert target.is_file(), f"{link} does not resolve"
        assert out.resolve() in target.parents
    audio = [a for t, a in page.tags if t == "audio"]
    assert audio and all(a.get("aria-label") for a in audio)
    for a in audio:
        info = sf.info(str(out / a["src"]))
        assert info.subtype == "PCM_16" and info.format in ("FLAC", "WAV")
        x, _ = sf.read(str(out / a["src"]))
        assert x.size > 0 and np.abs(x).max() > 1e-3
    assert all(a.get("alt") for t, a in page.tags if t == "img")
    assert all(a.get("scope") in ("col", "colgroup", "row") for t, a in page.tags if t == "th")
    return page


# -- synthetic inputs --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synthetic_report(tmp_path_factory):
    from sdmvae_cli.audio.synthetic import source_filter_speech

    root = tmp_path_factory.mktemp("report")
    utts = []
    for i, spk in enumerate(["a", "a", "b"]):
        p = write_wav(root / "audio" / spk / f"u{i}.flac", 0.5 * source_filter_speech(1.2, seed=i))
        utts.append((f"{spk}/u{i}", spk, p))
    rng = np.random.default_rng(0)
    inputs = [
        fake_eval(root / "vae-s0", MODEL_CFG["vae"], utts, 0, rng, run_dir=True),  # a run directory
        fake_eval(root / "vae-s1" / "eval-test", MODEL_CFG["vae"], utts, 1, rng),  # same config, other seed
        fake_eval(root / "sdm-old", MODEL_CFG["sdm"], utts, 0, rng, old=True),  # an old summary
    ]
    index = make_report(inputs, root / "out", n_utterances=2)
    return root, inputs, index


def _summaries(inputs: list[Path]) -> list[dict]:
    return [
        json.loads(((p / "eval-test") if (p / "best.pt").exists() else p).joinpath("summary.json").read_text()) for p in inputs
    ]


def test_page_links_audio_and_accessibility(synthetic_report):
    root, inputs, index = synthetic_report
    out = index.parent
    page = check_page(out)
    audio = [a["src"] for t, a in page.tags if t == "audio"]
    assert len(audio) == 2 * (1 + len(inputs))  # 2 utterances x (input + every model)
    # one utterance per speaker first: u0 (speaker a) then u2 (speaker b)
    report = json.loads((out / "report.json").read_text())
    assert [u["id"] for u in report["utterances"]] == ["a/u0", "b/u2"]
    src, _ = sf.read(str(root / "audio" / "b" / "u2.flac"))
    for a in audio:
        if a.startswith("audio/u2-"):
            assert sf.info(str(out / a)).frames == src.size  # the source's length
    for m in report["models"]:
        assert (out / m["config"]).is_file() and m["hoyer"] and m["codes"]
    run = next(m for m in report["models"] if m["slug"] == "vae-s0")
    assert run["loss"] and json.loads((out / run["config"]).read_text())["seed"] == 0  # the run dir's own config.json
    assert report["codes_vmax"] > 0


def test_every_model_has_its_own_title(synthetic_report, tmp_path):
    """Two runs of one configuration were both titled "VAE, m=64" (players, spectrograms, codes,
    Hoyer); now each title adds what tells them apart: the run folder or released name, else the
    seed."""
    from sdmvae_cli.report.inputs import collect_runs
    from sdmvae_cli.report.page import table_rows

    _, _, index = synthetic_report
    report = json.loads((index.parent / "report.json").read_text())
    labels = [m["label"] for m in report["models"]]
    assert labels == ["VAE, m=64 (vae-s0)", "VAE, m=64 (vae-m64)", "SDM-VAE (identity), m=64"]  # a run folder, a released name
    for u in report["utterances"]:
        assert [c["label"] for c in u["cells"]] == ["Input", *labels]
    html = index.read_text()
    assert all(html.count(f"<figcaption>{lab}</figcaption>") == len(report["utterances"]) for lab in labels)
    # one released model evaluated for two seeds' worth of summaries: the same name, so the seed
    rng = np.random.default_rng(1)
    utts = report["utterances"]
    evs = [
        fake_eval(
            tmp_path / f"e{s}" / "eval-test", MODEL_CFG["vae"], [(u["id"], u["speaker"], Path("x.wav")) for u in utts], s, rng
        )
        for s in (3, 4)
    ]
    assert [r.label for r in collect_runs(evs)] == ["VAE, m=64 (seed 3)", "VAE, m=64 (seed 4)"]
    s = json.loads((evs[1] / "summary.json").read_text())  # another learning rate: two configurations, one model label
    s["train"]["lr"] = 3e-4
    (evs[1] / "summary.json").write_text(json.dumps(s))
    assert sorted(r["label"] for r in table_rows(collect_runs(evs))) == ["VAE (vae-m64)", "VAE (vae-m64-2)"]


def test_loss_panels_plot_every_loss_column_train_writes(synthetic_report, tmp_path, monkeypatch):
    """history.csv is read by its header: every train_*/val_* column train writes is plotted
    (only total losses were read, so the IS and KL panels were empty, the median never drawn),
    and the best epoch is the one the run marked."""
    from sdmvae_cli.report.inputs import collect_runs, read_history
    from sdmvae_cli.report.inputs import training_history as _history
    from sdmvae_cli.training import curves

    hist = made_up_history(6)
    write_history(tmp_path, hist)
    got = read_history(tmp_path / "history.csv")
    losses = [k for k in hist[0] if k.startswith(("train_", "val_"))]
    assert len(losses) >= 7 and [sorted(set(h) - {"epoch", "best"}) for h in got] == [sorted(losses)] * 6
    assert [h["val_kl"] for h in got] == [h["val_kl"] for h in hist] and [h["best"] for h in got] == [h["best"] for h in hist]
    run = collect_runs([synthetic_report[1][0]])[0]  # a run directory: its history.csv
    assert sorted(set(_history(run, {})[0]) - {"epoch", "best"}) == sorted(losses)
    figs = []
    monkeypatch.setattr(curves, "_save", lambda fig, path: figs.append(fig) or path)
    curves.plot_loss(got, tmp_path / "loss.png")
    assert len(figs[0].axes) == len(curves.LOSS_TERMS)  # every column train writes is a curve of total, IS or KL
    lines = [ln for ax in figs[0].axes for ln in ax.get_lines()]
    for k in losses:
        assert any(np.allclose(ln.get_ydata(), [h[k] for h in hist]) for ln in lines if len(ln.get_ydata()) == 6), k
    marks = {tuple(ln.get_xdata()) for ln in lines if len(ln.get_xdata()) == 2}
    assert marks == {(4, 4)}  # the last epoch marked best, in every panel


def test_spectrogram_thumbnails_have_a_colour_bar_in_db(tmp_path, monkeypatch):
    from sdmvae_cli.report import figures as plots

    figs = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figs.append(fig) or path)
    p = np.random.default_rng(0).uniform(1e-6, 1.0, (50, 513))
    plots.plot_power(p, 0.016, 16000, tmp_path / "s.png", "input", top_db=0.0)
    _, bar = figs[0].axes
    assert bar.get_ylabel() == "dB" and bar.get_ylim() == pytest.approx((-80, 0))


def test_fewer_utterances_than_asked_are_said_and_recorded(good_eval, tmp_path, capsys):
    """--utterances 3 where 2 were scored by every model showed 2 without a word; now stderr and
    the page say how many were available and why."""
    from sdmvae_cli.cli.app import run

    assert run(["report", str(good_eval), "--out", str(tmp_path / "r"), "-n", "3"]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "--utterances 3 asked for, 2 shown" in err[0] and "scored by every model" in err[0], err
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert (
        len(report["utterances"]) == 2
        and "2 shown" in report["utterance_note"]
        and "(scored: vae-m64 2 of 2)" in report["utterance_note"]
    )
    assert report["utterance_note"] in (tmp_path / "r" / "index.html").read_text()
    assert run(["report", str(good_eval), "--out", str(tmp_path / "r2"), "-n", "2"]) == 0
    assert (
        capsys.readouterr().err.strip() == ""
        and json.loads((tmp_path / "r2" / "report.json").read_text())["utterance_note"] is None
    )


def test_one_metric_registry_heads_the_table_and_the_report(synthetic_report):
    """The report's columns are the registry's metrics, in its order, under the table's headers
    (they were declared apart, "SI-SDR (dB)" on the page and "SI-SDR dB" in the table)."""
    from sdmvae_cli.evaluation.table import HEADERS

    report = json.loads((synthetic_report[2].parent / "report.json").read_text())
    assert [(m["key"], m["label"]) for m in report["metrics"]] == [(m.key, HEADERS[m.key]) for m in METRICS]
    assert [m["group"] for m in report["metrics"]] == ["paper" if m.paper else "modern" for m in METRICS]


def test_runs_differing_only_in_patience_are_one_row_in_the_table_and_the_report(tmp_path):
    """Which summaries are seeds of one configuration is one rule (evaluation.results.config_key):
    the report counted every training option, so two runs that differ only in --patience were one
    row of `table --layout table1` and two rows of the report; now one row in both, same numbers."""
    from sdmvae_cli.evaluation.table import render
    from sdmvae_cli.report.inputs import collect_runs
    from sdmvae_cli.report.page import table_rows

    rng = np.random.default_rng(2)
    evs = [fake_eval(tmp_path / f"e{s}" / "eval-test", MODEL_CFG["vae"], [("a/u0", "a", Path("x.wav"))], s, rng) for s in (0, 1)]
    s = json.loads((evs[1] / "summary.json").read_text())
    s["train"]["patience"] = s["train"].get("patience", 20) + 5
    (evs[1] / "summary.json").write_text(json.dumps(s))
    report = table_rows(collect_runs(evs))
    table = list(csv.DictReader(io.StringIO(render([e / "summary.json" for e in evs], "csv", "table1"))))
    assert len(report) == len(table) == 1
    assert report[0]["seeds"] == [0, 1] and table[0]["seeds"] == "2"
    estoi = next(c for c in report[0]["cells"] if c["key"] == "estoi")
    assert (float(table[0]["estoi"]), float(table[0]["estoi_std"])) == (estoi["mean"], estoi["std"])


def test_table_values_equal_summaries(synthetic_report):
    _, inputs, index = synthetic_report
    page = Page(index.read_text())
    s0, s1, old = _summaries(inputs)
    assert len(page.rows) == 2  # the two seeds share a row
    by_n = {len(r["models"]): r for r in page.rows}
    seeds, single = by_n[2]["cells"], by_n[1]["cells"]
    for m in METRICS:
        pair = [metric_stat(s, m.key).mean for s in (s0, s1)]
        assert seeds[m.key] == pytest.approx(np.mean(pair), rel=1e-12)
    std = json.loads((index.parent / "report.json").read_text())
    row = next(r for r in std["table"] if len(r["models"]) == 2)
    est = next(c for c in row["cells"] if c["key"] == "estoi")
    assert est["std"] == pytest.approx(np.std([s0["metrics"]["estoi"]["mean"], s1["metrics"]["estoi"]["mean"]], ddof=1))
    # an old summary: its `pesq` is PESQ-WB, pesq_nb is absent (a dash), the pooled Hoyer was hoyer_mean
    assert single["pesq_nb"] is None
    assert single["pesq_wb"] == old["metrics"]["pesq"]["mean"]
    assert single["stoi"] == old["metrics"]["stoi"]["mean"]
    assert single["hoyer_pooled"] == old["sparsity"]["hoyer_mean"]
    assert "\u2013" in index.read_text()


def test_refuses_to_overwrite(synthetic_report, tmp_path):
    root, inputs, index = synthetic_report
    with pytest.raises(SdmvaeError, match="exists"):
        make_report(inputs[1:2], index.parent, n_utterances=0)
    other = tmp_path / "not-a-report"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(SdmvaeError, match="not an sdmvae report"):
        make_report(inputs[1:2], other, n_utterances=0, force=True)
    assert (other / "keep.txt").read_text() == "x"
    with pytest.raises(SdmvaeError, match="replace an input"):
        make_report(inputs[1:2], inputs[1].parent, n_utterances=0, force=True)
    ev = _eval_dir(inputs[1])
    with pytest.raises(SdmvaeError, match="inside an input"):
        make_report(inputs[1:2], ev / "report", n_utterances=0)
    assert not (ev / "report").exists()
    # --force replaces an earlier report, and leaves nothing beside it
    again = make_report(inputs[1:2], tmp_path / "r", n_utterances=1)
    before = sorted(p.name for p in again.parent.parent.iterdir())
    stale = tmp_path / ".r.k1ll3d"  # the build folder of a report killed with kill -9 before its rename
    stale.mkdir()
    (stale / "index.html").write_text("half")
    make_report(inputs[1:3], tmp_path / "r", n_utterances=1, force=True)
    assert len(Page(again.read_text()).rows) == 2
    assert sorted(p.name for p in again.parent.parent.iterdir()) == before  # the stale build is gone too


def test_cli_errors_are_one_line(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "sdmvae_cli", "report", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0 and "no such directory" in r.stderr
    assert not (tmp_path / "o").exists()


# -- corrupt or hand-edited evaluation outputs ----------------------------------------------------
def _edit_summary(**changes):
    def edit(d: Path):
        s = json.loads((d / "summary.json").read_text())
        for k, v in changes.items():
            if v is _DROP:
                s.pop(k)
            else:
                s[k] = v(s[k]) if callable(v) else v
        (d / "summary.json").write_text(json.dumps(s))

    return edit


_DROP = object()


def _write(name: str, data):
    def edit(d: Path):
        (d / name).write_bytes(data) if isinstance(data, bytes) else (d / name).write_text(data)

    return edit


def _truncate_csv(d: Path):
    text = (d / "per_file.csv").read_text()
    (d / "per_file.csv").write_text(text[: text.index("\n") + 8])  # the first row cut inside its path


CORRUPT = {
    "summary-list": (_write("summary.json", "[1, 2]"), "not a summary.json written by"),
    "summary-binary": (_write("summary.json", b"\xff\xfe\x00 garbage"), "not a JSON summary"),
    "metrics-string": (_edit_summary(metrics="x"), "'metrics' field"),
    "metric-mean-string": (_edit_summary(metrics=lambda m: m | {"estoi": {"mean": "0.9", "std": 0.1, "n": 3}}), "metric 'estoi'"),
    "metric-entry-number": (_edit_summary(metrics=lambda m: m | {"stoi": 0.9}), "metric 'stoi'"),
    "no-checkpoint": (_edit_summary(checkpoint=_DROP), "no 'checkpoint' field"),
    "checkpoint-gone": (_edit_summary(checkpoint="/nowhere/gone.pt"), "checkpoint /nowhere/gone.pt does not exist"),
    "latent-string": (_edit_summary(model=lambda m: m | {"latent": "sixty"}), "'model' field"),
    "model-no-name": (_edit_summary(model=lambda m: {k: v for k, v in m.items() if k != "model"}), "'model' field"),
    "split-number": (_edit_summary(split=3), "'split' field"),
    "versions-string": (_edit_summary(versions="0.1"), "'versions' field"),
    "pooled-hoyer-string": (_edit_summary(sparsity=lambda s: s | {"hoyer_pooled": "x"}), "'sparsity' field"),
    "csv-columns": (
        lambda d: (d / "per_file.csv").write_text(
            (d / "per_file.csv").read_text().replace("id,speaker,path", "ID,Speaker,Path", 1)
        ),
        "no 'id' or 'path' column",
    ),
    "csv-binary": (_write("per_file.csv", b"\xff\xfe\x00\x01 garbage\n"), "not a CSV written by"),
    "csv-empty": (_write("per_file.csv", ""), "per_file.csv: empty"),
    "csv-truncated": (_truncate_csv, "no source path"),  # and the prepared dir is gone (as fake_eval writes it)
    "audio-gone": (
        lambda d: (d / "per_file.csv").write_text((d / "per_file.csv").read_text().replace("/audio/", "/gone/")),
        "source audio",
    ),
    "hoyer-garbage": (_write("hoyer_frames.npy", b"not an npy file"), "hoyer_frames.npy: not the per-frame Hoyer array"),
    "hoyer-2d": (lambda d: np.save(d / "hoyer_frames.npy", np.ones((3, 4))), "hoyer_frames.npy: not the per-frame Hoyer array"),
}


@pytest.fixture(scope="module")
def good_eval(tmp_path_factory):
    """One evaluation directory as `sdmvae evaluate` writes it (around synthetic audio)."""
    from sdmvae_cli.audio.synthetic import source_filter_speech

    root = tmp_path_factory.mktemp("corrupt")
    utts = [
        (f"a/u{i}", "a", write_wav(root / "audio" / "a" / f"u{i}.flac", 0.5 * source_filter_speech(1.0, seed=i)))
        for i in range(2)
    ]
    return fake_eval(root / "good", MODEL_CFG["vae"], utts, 0, np.random.default_rng(0))


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_evaluation_is_one_clear_line_and_no_output(good_eval, tmp_path, capsys, case):
    """A hand-edited or damaged summary.json, per_file.csv or hoyer_frames.npy: exit 1, one line
    that names the problem (no internal error), and no --out folder, whole or half-written."""
    from sdmvae_cli.cli.app import run

    edit, needle = CORRUPT[case]
    bad = shutil.copytree(good_eval, tmp_path / "bad")
    edit(bad)
    out = tmp_path / "o" / "report"
    code = run(["report", str(bad), str(good_eval), "--out", str(out), "-n", "1"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1, err
    assert needle in lines[0] and "internal error" not in lines[0], lines[0]
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


@pytest.mark.parametrize(
    "case", ["summary-list", "summary-binary", "latent-string", "model-no-name", "hoyer-garbage", "hoyer-2d", "hoyer-gone"]
)
def test_plot_hoyer_reads_evaluations_as_the_report_does(good_eval, tmp_path, capsys, case):
    """`sdmvae plot hoyer` reads evaluations through the report's checked readers: a good one gives
    the figure, a damaged one the report's one clear line (exit 1) and no figure."""
    from sdmvae_cli.cli.app import run

    assert run(["plot", "hoyer", str(good_eval), "--out", str(tmp_path / "ok.png")]) == 0
    assert (tmp_path / "ok.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    bad = shutil.copytree(good_eval, tmp_path / "bad")
    edit, needle = CORRUPT[case] if case in CORRUPT else (lambda d: (d / "hoyer_frames.npy").unlink(), "no hoyer_frames.npy")
    edit(bad)
    code = run(["plot", "hoyer", str(good_eval), str(bad), "--out", str(tmp_path / "h.png")])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and needle in lines[0] and "internal error" not in lines[0], lines
    assert not (tmp_path / "h.png").exists()


@pytest.mark.parametrize("frames", [np.zeros(0, np.float32), np.full(20, np.nan, np.float32)])
def test_empty_or_nan_hoyer_frames_leave_the_histogram_out_quietly(good_eval, tmp_path, capsys, frames):
    from sdmvae_cli.cli.app import run

    ev = shutil.copytree(good_eval, tmp_path / "ev")
    np.save(ev / "hoyer_frames.npy", frames)
    assert run(["report", str(good_eval), str(ev), "--out", str(tmp_path / "r"), "-n", "0"]) == 0
    assert capsys.readouterr().err.strip() == ""
    models = json.loads((tmp_path / "r" / "report.json").read_text())["models"]
    assert [m["hoyer"] is None for m in models] == [False, True]


# -- real speech ---------------------------------------------------------------------------------
@needs_shared
def test_real_speech_report(tmp_path):
    """prepare -> evaluate (2 released models, 2 utterances) -> report, on real LibriSpeech."""
    from sdmvae_cli.data.prepare import PrepareOptions, prepare
    from sdmvae_cli.evaluation.evaluate import evaluate_checkpoint

    rows = list(csv.DictReader(open(DEV / "manifest.csv")))
    by_spk: dict[str, list[dict]] = {}
    for r in sorted(rows, key=lambda r: float(r["seconds"])):
        by_spk.setdefault(r["speaker"], []).append(r)
    spk = sorted(by_spk)[:4]
    for s in spk:
        (tmp_path / "corpus" / s).mkdir(parents=True)
        src = DEV / by_spk[s][0]["path"]
        (tmp_path / "corpus" / s / src.name).symlink_to(src)
    (tmp_path / "split.json").write_text(json.dumps({"validation": [spk[0]], "test": spk[2:]}))
    prep = tmp_path / "prep"
    prepare(tmp_path / "corpus", prep, PrepareOptions(layout="folder", split_file=str(tmp_path / "split.json")))
    evals = [evaluate_checkpoint(MODEL_CFG[k], prep, "test", tmp_path / f"eval-{k}", jobs=1).out_dir for k in ("vae", "sdm")]
    index = make_report(evals, tmp_path / "report", n_utterances=2)
    page = check_page(index.parent)
    summaries = [json.loads((e / "summary.json").read_text()) for e in evals]
    assert len(page.rows) == 2
    for row in page.rows:
        s = summaries[["vae-m64", "sdm-identity-m64"].index(row["models"][0])]
        for m in METRICS:
            assert row["cells"][m.key] == metric_stat(s, m.key).mean
    report = json.loads((index.parent / "report.json").read_text())
    assert {u["speaker"] for u in report["utterances"]} == set(spk[2:])
    assert report["data"][0]["corpus_dir"] == str(tmp_path / "corpus")


# -- a real browser ------------------------------------------------------------------------------
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (Debian: apt-get install chromium)")
def test_browser_renders_without_console_errors_and_sorts(synthetic_report, tmp_path):
    _, _, index = synthetic_report
    col = 3 + [m.key for m in METRICS].index("estoi")
    probe = index.parent / "probe.html"  # the page, plus a click on the ESTOI header
    probe.write_text(
        index.read_text().replace(
            "</body>", f"<script>document.querySelector('button[data-col=\"{col}\"]').click();</script></body>"
        )
    )
    try:
        r = subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--enable-logging=stderr",
                "--v=0",
                f"--user-data-dir={tmp_path / 'profile'}",
                "--dump-dom",
                probe.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        probe.unlink()
    assert r.returncode == 0, r.stderr[-2000:]
    console = [line for line in r.stderr.splitlines() if "CONSOLE" in line]
    assert not console, console
    sorted_page = Page(r.stdout)
    estoi = [row["cells"]["estoi"] for row in sorted_page.rows]
    assert len(estoi) == 2 and estoi == sorted(estoi)
    assert 'aria-sort="ascending"' in r.stdout


def _eval_dir(path: Path) -> Path:
    """The evaluation folder that a report input (an evaluation or a run folder) resolves to."""
    from sdmvae_cli.report.inputs import collect_runs

    return collect_runs([path])[0].eval_dir
