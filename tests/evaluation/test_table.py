"""`sdmvae table`: seeds aggregated as mean ± std, and which orderings hold for every seed (the
paired statistics over files and speakers: tests/evaluation/test_paired.py)."""

import csv
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from sdmvae_cli.core.errors import SdmvaeError
from sdmvae_cli.evaluation.results import read_summaries
from sdmvae_cli.evaluation.table import ordering_pairs, render
from sdmvae_cli.training.options import TrainOptions

CLI = [sys.executable, "-m", "sdmvae_cli"]


def _summary(path, model: dict, seed: int, scores: dict):
    """The fields of an `sdmvae evaluate` summary that the table reads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    s = {
        "kind": "checkpoint",
        "split": "test",
        "data_fingerprint": "f",
        "settings": {"hoyer": "paper"},
        "model": {"latent": 64, "input_transform": "log", "beta": 1.0, **model},
        "train": {"seed": seed, "lr": 1e-4, "batch_size": 128, "stop_on": TrainOptions.stop_on},
        "metrics": {k: {"mean": v, "std": 0.1, "n": 150} for k, v in scores.items()},
    }
    path.write_text(json.dumps(s))
    return path


@pytest.fixture
def three_seeds(tmp_path):
    """VAE and SDM-VAE, 3 seeds: SDM-VAE is sparser in every seed; PESQ crosses over in seed 2."""
    vae = {"pesq_nb": [3.0, 3.1, 3.2], "estoi": [0.85, 0.86, 0.87], "hoyer": [0.30, 0.31, 0.29]}
    sdm = {"pesq_nb": [3.15, 3.25, 3.05], "estoi": [0.84, 0.85, 0.86], "hoyer": [0.55, 0.60, 0.50]}
    paths = []
    for name, model, sc in (("vae", {"model": "vae"}, vae), ("sdm", {"model": "sdm", "dictionary": "dct", "k": 64}, sdm)):
        for seed in range(3):
            paths.append(
                _summary(tmp_path / f"{name}-s{seed}" / "summary.json", model, seed, {k: v[seed] for k, v in sc.items()})
            )
    return paths, vae, sdm


def test_table1_mean_and_std_over_seeds(three_seeds):
    paths, vae, sdm = three_seeds
    rows = list(csv.DictReader(io.StringIO(render(paths, "csv", "table1"))))
    by = {r["model"]: r for r in rows}
    assert by["VAE"]["seeds"] == "3" and by["SDM-VAE (DCT, k=64)"]["seeds"] == "3"
    for key in ("pesq_nb", "hoyer"):
        assert float(by["VAE"][key]) == pytest.approx(np.mean(vae[key]), rel=1e-5)
        assert float(by["SDM-VAE (DCT, k=64)"][f"{key}_std"]) == pytest.approx(np.std(sdm[key], ddof=1), rel=1e-5)


def test_orderings_say_which_hold_for_every_seed(three_seeds, tmp_path):
    """Summaries without per-file scores (renamed copies, as in docs/): each pair's seed signs
    from the summaries' means, no intervals, never significant, and a note saying why."""
    paths, _, _ = three_seeds
    pairs = {(c.key, c.b.label): c for c in ordering_pairs(read_summaries(paths))}
    hoyer = pairs[("hoyer", "SDM-VAE (DCT, k=64)")]
    assert hoyer.a.label == "VAE" and (hoyer.holds, len(hoyer.stats.seeds)) == (3, 3) and hoyer.every_seed
    assert hoyer.stats.signs == "+++" and hoyer.stats.diff == pytest.approx(0.25, rel=1e-9)
    assert hoyer.stats.file_ci is None and hoyer.stats.files == 0 and not hoyer.stats.significant
    pesq = pairs[("pesq_nb", "SDM-VAE (DCT, k=64)")]  # higher mean (3.15 vs 3.10), but not in seed 2
    assert (pesq.holds, pesq.stats.signs) == (2, "++-") and not pesq.every_seed
    estoi = pairs[("estoi", "VAE")]  # VAE higher in every seed
    assert estoi.every_seed
    md = render(paths, "markdown", "orderings")
    assert "| 64 | Hoyer (paper protocol) | SDM-VAE (DCT, k=64) 0.550 | VAE 0.300 | +0.2500 | - | - | +++ | - | no |" in md, md
    assert "no per-file scores" in md and "no intervals" in md
    # one seed only: nothing can hold "for every seed"
    one = [p for p in paths if p.parent.name.endswith("s0")]
    assert not any(c.every_seed for c in ordering_pairs(read_summaries(one)))
    r = subprocess.run(
        [*CLI, "table", *map(str, paths), "--layout", "orderings", "--format", "csv"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("m,metric,higher,lower")
    row = next(x for x in csv.DictReader(io.StringIO(r.stdout)) if x["metric"] == "hoyer")
    assert (row["m"], row["higher"], row["lower"], row["seeds_holding"], row["seeds_paired"], row["every_seed"]) == (
        "64",
        "SDM-VAE (DCT, k=64)",
        "VAE",
        "3",
        "3",
        "1",
    )
    assert (row["seed_signs"], row["files"], row["file_ci_low"], row["significant"]) == ("+++", "0", "", "0")
    assert float(row["higher_mean"]) == pytest.approx(0.55, rel=1e-12) and float(row["lower_mean"]) == pytest.approx(
        0.30, rel=1e-12
    )


def test_orderings_compare_every_pair_on_the_seeds_both_have_and_refuse_mixtures(three_seeds, tmp_path):
    """Every pair of configurations, not only neighbours in the ranking; a pair is matched on the
    seeds both configurations have (VSC lacks seed 2); another split, or a seed given twice, is
    refused."""
    paths, _, _ = three_seeds
    extra = [
        _summary(tmp_path / f"vsc-s{s}" / "summary.json", {"model": "vsc", "alpha": 0.5}, s, {"hoyer": v})
        for s, v in ((0, 0.40), (1, 0.45))
    ]  # no seed 2
    pairs = [c for c in ordering_pairs(read_summaries(paths + extra)) if c.key == "hoyer"]
    assert [(c.b.label, c.a.label, len(c.stats.seeds)) for c in pairs] == [
        ("SDM-VAE (DCT, k=64)", "VSC (alpha=0.5)", 2),
        ("SDM-VAE (DCT, k=64)", "VAE", 3),
        ("VSC (alpha=0.5)", "VAE", 2),
    ]
    assert pairs[0].stats.seed_diffs == pytest.approx([0.15, 0.15], rel=1e-9)
    other = json.loads(paths[0].read_text())
    other["split"] = "validation"
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "summary.json").write_text(json.dumps(other))
    with pytest.raises(SdmvaeError, match="one split"):
        ordering_pairs(read_summaries(paths + [tmp_path / "val" / "summary.json"]))
    (tmp_path / "dup").mkdir()
    (tmp_path / "dup" / "summary.json").write_text(paths[0].read_text())
    with pytest.raises(SdmvaeError, match="two summaries of one seed"):
        ordering_pairs(read_summaries(paths + [tmp_path / "dup" / "summary.json"]))


def test_runs_show_the_validation_statistic_each_run_was_selected_by(tmp_path):
    """The runs layout ends with the validation loss of the epoch the file holds: the mean for
    runs stopped on the mean, the median for "[median stop]" runs; older summaries: no column."""
    a = _summary(tmp_path / "a" / "summary.json", {"model": "vae"}, 0, {"pesq_nb": 3.0})
    b = _summary(tmp_path / "b" / "summary.json", {"model": "vae"}, 1, {"pesq_nb": 3.1})
    assert "val_loss" not in render([a, b], "csv", "runs").splitlines()[0]
    for p, stop, total, median in ((a, "mean", -1500.25, -1400.0), (b, "median", -900.0, -1450.75)):
        s = json.loads(p.read_text())
        s["validation"] = {"epoch": 7, "total": total, "median": median, "stop_on": stop}
        s["train"]["stop_on"] = stop
        p.write_text(json.dumps(s))
    rows = {r["run"]: r for r in csv.DictReader(io.StringIO(render([a, b], "csv", "runs")))}
    assert float(rows["a"]["val_loss"]) == -1500.25 and float(rows["b"]["val_loss"]) == -1450.75
    md = render([a, b], "markdown", "runs")
    assert "-1500.2" in md and "-1450.8" in md and "[median stop]" in md and "[mean stop]" in md  # not the default statistic
    # a summary that names its statistic (`evaluate` now): that one, whatever it is
    s = json.loads(a.read_text())
    s["validation"] |= {"stop_on": "posterior-mean", "posterior_mean": -1600.5, "statistic": -1600.5}
    s["train"]["stop_on"] = "posterior-mean"
    a.write_text(json.dumps(s))
    assert float(next(csv.DictReader(io.StringIO(render([a], "csv", "runs"))))["val_loss"]) == -1600.5


def test_summaries_scored_before_and_after_a_rekeying_are_one_dataset(tmp_path):
    """A seed scored before its prepared folder was re-keyed (old fingerprint) and one scored
    after share a row; a summary of really other data does not."""
    prep = tmp_path / "prep"
    prep.mkdir()
    (prep / "prepare.json").write_text(json.dumps({"fingerprint": "new", "previous_fingerprints": ["old"]}))
    paths = []
    for seed, fp in ((0, "old"), (1, "new")):
        p = _summary(tmp_path / f"vae-s{seed}" / "summary.json", {"model": "vae"}, seed, {"pesq_nb": 3.0 + seed / 10})
        s = json.loads(p.read_text()) | {"data_fingerprint": fp, "prepared_dir": str(prep)}
        p.write_text(json.dumps(s))
        paths.append(p)
    rows = list(csv.DictReader(io.StringIO(render(paths, "csv", "table1"))))
    assert len(rows) == 1 and rows[0]["seeds"] == "2", rows
    other = _summary(tmp_path / "vae-s2" / "summary.json", {"model": "vae"}, 2, {"pesq_nb": 3.5})
    other.write_text(json.dumps(json.loads(other.read_text()) | {"data_fingerprint": "elsewhere", "prepared_dir": str(prep)}))
    assert len(list(csv.DictReader(io.StringIO(render([*paths, other], "csv", "table1"))))) == 2


@pytest.mark.parametrize(
    "field,bad",
    [
        ("validation", "x"),
        ("validation", {"stop_on": "median", "median": "NaN?"}),
        ("validation", {"statistic": "oops"}),
        ("metrics", "x"),
        ("train", [1]),
        ("model", "x"),
    ],
)
def test_a_corrupt_summary_field_is_one_clear_line(tmp_path, field, bad):
    p = _summary(tmp_path / "a" / "summary.json", {"model": "vae"}, 0, {"pesq_nb": 3.0})
    p.write_text(json.dumps(json.loads(p.read_text()) | {field: bad}))
    with pytest.raises(SdmvaeError, match=f"{field}.*(not what `sdmvae evaluate` writes|not numbers)"):
        read_summaries([p])
    r = subprocess.run([*CLI, "table", str(p)], capture_output=True, text=True)
    assert r.returncode == 1 and "internal error" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_csv_is_full_precision_and_the_views_round(tmp_path):
    """The CSV is for scripts: each number read back equals the summary's (it was rounded to 6
    significant digits: -3128.32 for -3128.3153125); rich and markdown keep their rounding."""
    scores = {"pesq_nb": 3.14159265358979, "estoi": 0.8765432101234, "hoyer": 0.55555555555555}
    p = _summary(tmp_path / "a" / "summary.json", {"model": "vae"}, 0, scores)
    s = json.loads(p.read_text())
    s["validation"] = {"epoch": 7, "total": -3128.3153125, "median": -3001.1234567, "stop_on": "mean"}
    s["metrics"]["pesq_nb"]["std"] = 0.123456789012345
    p.write_text(json.dumps(s))
    s = json.loads(p.read_text())  # the values as a script reading summary.json sees them
    run = next(csv.DictReader(io.StringIO(render([p], "csv", "runs"))))
    assert float(run["val_loss"]) == s["validation"]["total"]
    for k in scores:
        assert float(run[k]) == s["metrics"][k]["mean"] and float(run[f"{k}_std"]) == s["metrics"][k]["std"]
    t1 = next(csv.DictReader(io.StringIO(render([p], "csv", "table1"))))
    assert all(float(t1[k]) == s["metrics"][k]["mean"] for k in scores)
    md = render([p], "markdown", "runs")
    assert "3.14 ± 0.12" in md and "-3128.3" in md and "3.14159" not in md and "-3128.31" not in md


@pytest.mark.parametrize("layout", ["table1", "orderings", "paired"])
def test_a_folder_summary_is_refused_by_the_layouts_that_cannot_place_it(three_seeds, tmp_path, capsys, layout):
    """table1 and orderings place a summary by its configuration and m: a folder-mode summary
    (`evaluate --ref/--est`) was dropped without a word; now one line names it (exit 2). The runs
    layout shows it as its own row."""
    from sdmvae_cli.cli.app import run

    paths, _, _ = three_seeds
    folder = tmp_path / "codec" / "summary.json"
    folder.parent.mkdir()
    folder.write_text(
        json.dumps(
            {
                "kind": "folders",
                "est_dir": str(tmp_path / "codec-out"),
                "ref_dir": str(tmp_path / "ref"),
                "metrics": {"pesq_nb": {"mean": 2.5, "std": 0.2, "n": 10}},
            }
        )
    )
    code = run(["table", *map(str, paths), str(folder), "--layout", layout])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and str(folder) in lines[0] and "folder-mode" in lines[0], lines
    assert run(["table", *map(str, paths), str(folder), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 7 and any(r["model"] == "folders: codec-out" and float(r["pesq_nb"]) == 2.5 for r in rows)


# -- `sdmvae models --released`: the released models' table -------------------------------------
def _models(*args: str, columns: int = 80) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, "models", "--released", *args], capture_output=True, text=True, env={**os.environ, "COLUMNS": str(columns)}
    )


def test_released_models_fit_one_line_each_at_80_columns():
    """At 80 columns the list wrapped to ~240 lines (descriptions in a table column); now one
    line per model (name, arch, m, the paper's scores, * the default), details with --long/--json."""
    rows = json.loads(_models("--json").stdout)
    assert len(rows) >= 2 and all(r["arch"] and r["latent"] for r in rows)  # read from each checkpoint
    r = _models()
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert max(map(len, lines)) <= 80 and len(lines) <= len(rows) + 10, r.stdout
    for row in rows:
        mine = [line.split() for line in lines if line.split()[:1] == [row["name"]]]
        assert len(mine) == 1, (row["name"], r.stdout)
        cells = [c for c in mine[0][1:] if c not in ("*", "e")]  # the default's and enhance's default's marks
        assert cells[:2] == [row["arch"], str(row["latent"])]
        assert [float(c) for c in cells[2:5]] == pytest.approx(
            [row["scores"][k] for k in ("pesq_nb", "estoi", "hoyer")], abs=6e-3
        )
        assert ("*" in mine[0]) == row["default"]
    long = _models("--long").stdout
    assert all(row["description"][:30] in long.replace("\n  ", " ") for row in rows) and "SI-SDR dB" in long
    for columns in (40, 0):  # too narrow for the table (or a junk COLUMNS): every name printed whole
        narrow = _models(columns=columns).stdout
        assert {row["name"] for row in rows} <= {t.rstrip(":") for t in narrow.split()}, narrow
    r = subprocess.run([*CLI, "models", "--long"], capture_output=True, text=True)  # --long belongs to --released
    assert r.returncode == 2 and "--released" in r.stderr and len(r.stderr.strip().splitlines()) == 1
