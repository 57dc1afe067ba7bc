"""`sdmvae table`: seeds aggregated as mean ± std, and which orderings hold for every seed."""

import csv
import io
import json
import subprocess
import sys

import numpy as np
import pytest

from sdmvae_cli.errors import SdmvaeError
from sdmvae_cli.table import ordering_steps, read_summaries, render

CLI = [sys.executable, "-m", "sdmvae_cli"]


def _summary(path, model: dict, seed: int, scores: dict):
    """The fields of an `sdmvae evaluate` summary that the table reads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    s = {"kind": "checkpoint", "split": "test", "data_fingerprint": "f", "settings": {"hoyer": "paper"},
         "model": {"latent": 64, "input_transform": "log", "beta": 1.0, **model},
         "train": {"seed": seed, "lr": 1e-4, "batch_size": 128},
         "metrics": {k: {"mean": v, "std": 0.1, "n": 150} for k, v in scores.items()}}
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
            paths.append(_summary(tmp_path / f"{name}-s{seed}" / "summary.json", model, seed, {k: v[seed] for k, v in sc.items()}))
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
    paths, _, _ = three_seeds
    steps = {(s.key, s.higher.label): s for s in ordering_steps(read_summaries(paths))}
    hoyer = steps[("hoyer", "SDM-VAE (DCT, k=64)")]
    assert hoyer.lower.label == "VAE" and (hoyer.holds, hoyer.paired) == (3, 3) and hoyer.every_seed
    pesq = steps[("pesq_nb", "SDM-VAE (DCT, k=64)")]  # higher mean (3.15 vs 3.10), but not in seed 2
    assert (pesq.holds, pesq.paired) == (2, 3) and not pesq.every_seed
    estoi = steps[("estoi", "VAE")]  # VAE higher in every seed
    assert estoi.every_seed
    md = render(paths, "markdown", "orderings")
    assert "SDM-VAE (DCT, k=64) 0.550 > (3/3) VAE 0.300" in md and "~ (2/3)" in md
    # one seed only: nothing can hold "for every seed"
    one = [p for p in paths if p.parent.name.endswith("s0")]
    assert not any(s.every_seed for s in ordering_steps(read_summaries(one)))
    r = subprocess.run([*CLI, "table", *map(str, paths), "--layout", "orderings", "--format", "csv"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("m,metric,higher,lower") and '64,hoyer,"SDM-VAE (DCT, k=64)",VAE,0.55,0.3,3,3,1' in r.stdout


def test_orderings_pair_the_seeds_of_the_whole_chain_and_refuse_mixtures(three_seeds, tmp_path):
    """A configuration missing a seed shrinks the pairing for every link (else a chain of '>'
    could hide a reversal in that seed); another split, or a seed given twice, is refused."""
    paths, _, _ = three_seeds
    extra = [_summary(tmp_path / f"vsc-s{s}" / "summary.json", {"model": "vsc", "alpha": 0.5}, s, {"hoyer": v})
             for s, v in ((0, 0.40), (1, 0.45))]  # no seed 2
    steps = [s for s in ordering_steps(read_summaries(paths + extra)) if s.key == "hoyer"]
    assert [s.higher.label for s in steps] == ["SDM-VAE (DCT, k=64)", "VSC (alpha=0.5)"] and all(s.paired == 2 for s in steps)
    other = json.loads(paths[0].read_text())
    other["split"] = "validation"
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "summary.json").write_text(json.dumps(other))
    with pytest.raises(SdmvaeError, match="one split"):
        ordering_steps(read_summaries(paths + [tmp_path / "val" / "summary.json"]))
    (tmp_path / "dup").mkdir()
    (tmp_path / "dup" / "summary.json").write_text(paths[0].read_text())
    with pytest.raises(SdmvaeError, match="two summaries of one seed"):
        ordering_steps(read_summaries(paths + [tmp_path / "dup" / "summary.json"]))


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
    assert "-1500.2" in md and "-1450.8" in md and "[median stop]" in md


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


@pytest.mark.parametrize("field,bad", [("validation", "x"), ("validation", {"stop_on": "median", "median": "NaN?"}),
                                       ("metrics", "x"), ("train", [1]), ("model", "x")])
def test_a_corrupt_summary_field_is_one_clear_line(tmp_path, field, bad):
    p = _summary(tmp_path / "a" / "summary.json", {"model": "vae"}, 0, {"pesq_nb": 3.0})
    p.write_text(json.dumps(json.loads(p.read_text()) | {field: bad}))
    with pytest.raises(SdmvaeError, match=f"{field}.*(not what `sdmvae evaluate` writes|not numbers)"):
        read_summaries([p])
    r = subprocess.run([*CLI, "table", str(p)], capture_output=True, text=True)
    assert r.returncode == 1 and "internal error" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
