"""Paired statistics of `sdmvae table` (--layout paired / orderings): per-file differences over
paired seeds, bootstrap intervals over files and over speakers (scipy.stats.bootstrap), seed signs,
files left out, significance."""

import csv
import io
import json
import math

import numpy as np
import pytest
from scipy.stats import bootstrap

from sdmvae_cli.cli.app import run
from sdmvae_cli.evaluation import paired
from sdmvae_cli.evaluation.results import read_summaries
from sdmvae_cli.evaluation.table import ordering_pairs, paired_configurations, render
from sdmvae_cli.training.options import TrainOptions

KEYS = ("pesq_nb", "estoi", "hoyer", "pesq_wb", "stoi", "si_sdr")
SPEAKERS = [f"spk{j}" for j in range(8)]
IDS = [f"{s}/u{i}" for s in SPEAKERS for i in range(5)]  # 8 speakers x 5 files
VAE = {"model": "vae"}
SDM = {"model": "sdm", "dictionary": "identity", "k": 64}


def fake_eval(
    d, model: dict, seed: int, scores: dict[str, dict[str, float] | None], speakers: bool = True, prepared_dir: str | None = None
):
    """An evaluation folder as `sdmvae evaluate` writes it: summary.json and per_file.csv (one row
    per utterance: id, speaker, path, metrics, error, metric_errors); ``scores[id]`` None is a
    file that failed, a NaN a metric that failed on it."""
    d.mkdir(parents=True)
    rows = [
        {
            "id": i,
            "speaker": i.split("/")[0] if speakers else "",
            "path": f"/audio/{i}.flac",
            **({"error": "the estimate is silent"} if v is None else {k: x for k, x in v.items()}),
        }
        for i, v in scores.items()
    ]
    metrics = {}
    for k in KEYS:
        xs = [r[k] for r in rows if k in r and math.isfinite(r[k])]
        metrics[k] = {"mean": float(np.mean(xs)), "std": float(np.std(xs)), "n": len(xs)}
    s = {
        "kind": "checkpoint",
        "split": "test",
        "data_fingerprint": "f",
        "settings": {"hoyer": "paper"},
        "prepared_dir": prepared_dir or str(d / "gone"),
        "files": len(rows),
        "model": {"latent": 64, "input_transform": "log", "beta": 1.0, **model},
        "train": {"seed": seed, "lr": 1e-4, "batch_size": 128, "stop_on": TrainOptions.stop_on},
        "metrics": metrics,
    }
    (d / "summary.json").write_text(json.dumps(s))
    with open(d / "per_file.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["id", "speaker", "path", *KEYS, "error", "metric_errors"], extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()})
    return d / "summary.json"


def world(tmp_path, shift: float = 0.5, seeds=(0, 1, 2), null: bool = False, seed_shift: dict | None = None):
    """VAE (A) and SDM-VAE (B) on the same 40 files of 8 speakers, 3 seeds: B = A + shift + noise
    (per seed ``seed_shift[seed]`` instead of ``shift`` where given), or with ``null`` B = A's
    scores shuffled over the files (same distribution, mean difference exactly 0)."""
    rng = np.random.default_rng(0)
    base = {k: rng.normal(3.0, 0.5, len(IDS)) for k in KEYS}
    a_paths, b_paths, a_vals, b_vals = [], [], {}, {}
    for s in seeds:
        a = {k: base[k] + rng.normal(0, 0.1, len(IDS)) for k in KEYS}
        sh = (seed_shift or {}).get(s, shift)
        b = {k: rng.permutation(a[k]) if null else a[k] + sh + rng.normal(0, 0.3, len(IDS)) for k in KEYS}
        a_vals[s], b_vals[s] = a, b
        a_paths.append(
            fake_eval(
                tmp_path / f"vae-s{s}" / "eval-test", VAE, s, {i: {k: float(a[k][n]) for k in KEYS} for n, i in enumerate(IDS)}
            )
        )
        b_paths.append(
            fake_eval(
                tmp_path / f"sdm-s{s}" / "eval-test", SDM, s, {i: {k: float(b[k][n]) for k in KEYS} for n, i in enumerate(IDS)}
            )
        )
    return a_paths, b_paths, a_vals, b_vals


def edit_per_file(p, fn):
    """Rewrite the per_file.csv beside summary ``p`` with ``fn(rows)``, keeping the file count in step."""
    with open(p.parent / "per_file.csv", newline="") as fh:
        rows = fn(list(csv.DictReader(fh)))
    with open(p.parent / "per_file.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    p.write_text(json.dumps(json.loads(p.read_text()) | {"files": len(rows)}))


def scipy_ci(x):
    """scipy.stats.bootstrap called directly, with the module's documented settings."""
    ci = bootstrap(
        (np.asarray(x),),
        np.mean,
        vectorized=True,
        confidence_level=0.95,
        n_resamples=9999,
        method="BCa",
        random_state=np.random.default_rng(0),
    ).confidence_interval
    return ci.low, ci.high


def by_key(comparisons):
    return {c.key: c.stats for c in comparisons}


def test_intervals_are_scipys_bootstrap_over_files_and_over_speaker_means(tmp_path):
    """The file interval is scipy.stats.bootstrap on the per-file differences averaged over the
    paired seeds; the speaker interval is scipy on the per-speaker means of those differences."""
    a_paths, b_paths, a, b = world(tmp_path)
    st = by_key(paired_configurations(read_summaries(a_paths + b_paths)))
    order = np.argsort(IDS)  # files in id order, speakers in name order
    for k in ("pesq_nb", "si_sdr"):
        d = np.mean([b[s][k] - a[s][k] for s in (0, 1, 2)], axis=0)[order]
        assert st[k].diff == pytest.approx(d.mean(), rel=1e-12) and (st[k].files, st[k].left_out) == (40, 0)
        assert st[k].file_ci == pytest.approx(scipy_ci(d), rel=1e-9)
        spk = np.array([i.split("/")[0] for i in np.array(IDS)[order]])
        means = np.array([d[spk == s].mean() for s in sorted(set(spk))])
        assert st[k].speakers == 8 and st[k].speaker_diff == pytest.approx(means.mean(), rel=1e-12)
        assert st[k].speaker_ci == pytest.approx(scipy_ci(means), rel=1e-9)
        assert st[k].speaker_ci[1] - st[k].speaker_ci[0] > 0 and st[k].speaker_ci != st[k].file_ci
        assert st[k].a_mean == pytest.approx(np.mean([a[s][k] for s in (0, 1, 2)]), rel=1e-12)
    assert paired.interval(np.full(5, 0.25)) == (0.25, 0.25) and paired.interval(np.array([1.0])) is None


def test_a_real_difference_is_significant_and_a_null_one_is_not(tmp_path):
    a_paths, b_paths, _, _ = world(tmp_path / "real")
    for st in by_key(paired_configurations(read_summaries(a_paths + b_paths))).values():
        assert st.significant and st.signs == "+++" and st.diff == pytest.approx(0.5, abs=0.15)
        assert st.file_ci[0] > 0 and st.speaker_ci[0] > 0
    a_paths, b_paths, _, _ = world(tmp_path / "null", null=True)
    for st in by_key(paired_configurations(read_summaries(a_paths + b_paths))).values():
        assert not st.significant and st.diff == pytest.approx(0, abs=1e-12)
        assert st.file_ci[0] < 0 < st.file_ci[1] and st.speaker_ci[0] < 0 < st.speaker_ci[1]


def test_seed_signs_and_a_reversal_in_one_seed(tmp_path):
    """B above A in seeds 0 and 1, below in seed 2: signs "++-", the intervals over files of the
    seed-averaged difference may exclude 0 but the ordering is not significant; seeds are paired by
    number (A without seed 2 pairs seeds 0 and 1 only)."""
    a_paths, b_paths, a, b = world(tmp_path, seed_shift={0: 0.6, 1: 0.6, 2: -0.3})
    st = by_key(paired_configurations(read_summaries(a_paths + b_paths)))["estoi"]
    assert st.signs == "++-" and st.seeds == [0, 1, 2] and st.holding == 2 and not st.significant
    assert st.seed_diffs == pytest.approx([np.mean(b[s]["estoi"] - a[s]["estoi"]) for s in (0, 1, 2)], rel=1e-9)
    st = by_key(paired_configurations(read_summaries(a_paths[:2] + b_paths)))["estoi"]
    assert st.seeds == [0, 1] and st.signs == "++" and st.significant
    one = by_key(paired_configurations(read_summaries(a_paths[:1] + b_paths[:1])))["estoi"]
    assert one.signs == "+" and one.file_ci[0] > 0 and not one.significant  # one seed cannot show it survives retraining


def test_missing_files_are_left_out_and_counted(tmp_path):
    """A file missing from one evaluation, failed in another, or with one metric NaN there: left out
    of that metric's paired mean (on every seed) and counted."""
    a_paths, b_paths, a, b = world(tmp_path)
    edit = edit_per_file
    edit(b_paths[1], lambda rows: [r for r in rows if r["id"] != IDS[3]])  # missing
    edit(a_paths[0], lambda rows: [r | ({k: "" for k in KEYS} | {"error": "silent"} if r["id"] == IDS[7] else {}) for r in rows])
    edit(
        b_paths[2],
        lambda rows: [
            r | ({"pesq_nb": "nan", "metric_errors": "pesq_nb: PESQ crashed"} if r["id"] == IDS[9] else {}) for r in rows
        ],
    )
    st = by_key(paired_configurations(read_summaries(a_paths + b_paths)))
    assert (st["pesq_nb"].files, st["pesq_nb"].left_out) == (37, 3) and (st["estoi"].files, st["estoi"].left_out) == (38, 2)
    keep = [n for n, i in enumerate(IDS) if i not in (IDS[3], IDS[7])]
    keep = [keep[n] for n in np.argsort([IDS[n] for n in keep])]
    d = np.mean([b[s]["estoi"][keep] - a[s]["estoi"][keep] for s in (0, 1, 2)], axis=0)
    assert st["estoi"].diff == pytest.approx(d.mean(), rel=1e-12) and st["estoi"].file_ci == pytest.approx(scipy_ci(d), rel=1e-9)
    md = render(a_paths + b_paths, "markdown", "paired")
    assert "| PESQ P.862 raw (paper) |" in md and "n=37" in md and "| 3 | yes |" in md, md


def test_speakers_come_from_the_manifest_where_per_file_has_none(tmp_path):
    """per_file.csv without speakers: the prepared folder's manifest maps id -> speaker; where that
    folder is gone too, there is no speaker interval and nothing is called significant."""
    ra, rb, _, _ = world(tmp_path / "ref")
    ref = by_key(paired_configurations(read_summaries(ra + rb)))
    prep = tmp_path / "prep"
    (prep / "test").mkdir(parents=True)
    (prep / "test" / "manifest.jsonl").write_text(
        "".join(
            json.dumps({"id": i, "speaker": i.split("/")[0], "path": f"/audio/{i}.flac", "frame_offset": 0, "n_frames": 1}) + "\n"
            for i in IDS
        )
    )
    a_paths, b_paths, _, _ = world(tmp_path / "w")
    for p in a_paths + b_paths:
        edit_per_file(p, lambda rows: [r | {"speaker": ""} for r in rows])
    assert (a_paths[0].parent / "per_file.csv").read_text().splitlines()[1].startswith("spk0/u0,,")
    st = by_key(paired_configurations(read_summaries(a_paths + b_paths)))
    assert st["pesq_nb"].speakers == 0 and st["pesq_nb"].speaker_ci is None and not st["pesq_nb"].significant
    for p in a_paths + b_paths:
        p.write_text(json.dumps(json.loads(p.read_text()) | {"prepared_dir": str(prep)}))
    st = by_key(paired_configurations(read_summaries(a_paths + b_paths)))
    assert st["pesq_nb"].speakers == 8 and st["pesq_nb"].speaker_ci == ref["pesq_nb"].speaker_ci and st["pesq_nb"].significant


def test_paired_layout_from_the_cli_csv_full_precision_and_order(tmp_path, capsys):
    """`table A... B... --layout paired --format csv`: B - A per metric, every number round-trip
    exact; the configuration of the first summary given is A."""
    a_paths, b_paths, _, _ = world(tmp_path)
    st = by_key(paired_configurations(read_summaries(a_paths + b_paths)))
    assert run(["table", *map(str, a_paths), *map(str, b_paths), "--layout", "paired", "--format", "csv"]) == 0
    rows = {r["metric"]: r for r in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    assert list(rows) == list(KEYS)
    r, s = rows["pesq_nb"], st["pesq_nb"]
    assert (r["a"], r["b"], r["a_m"], r["b_m"], r["seeds"], r["seed_signs"], r["significant"]) == (
        "VAE",
        "SDM-VAE (identity)",
        "64",
        "64",
        "0 1 2",
        "+++",
        "1",
    )
    assert float(r["diff"]) == s.diff and (float(r["file_ci_low"]), float(r["file_ci_high"])) == s.file_ci
    assert (float(r["speaker_ci_low"]), float(r["speaker_ci_high"])) == s.speaker_ci and float(r["b_mean"]) == s.b_mean
    assert [float(x) for x in r["seed_diffs"].split()] == s.seed_diffs and (r["files"], r["files_left_out"], r["speakers"]) == (
        "40",
        "0",
        "8",
    )
    assert run(["table", *map(str, b_paths), *map(str, a_paths), "--layout", "paired", "--format", "csv"]) == 0
    back = {r["metric"]: r for r in csv.DictReader(io.StringIO(capsys.readouterr().out))}["pesq_nb"]
    assert float(back["diff"]) == pytest.approx(-s.diff, rel=1e-12) and back["a"] == "SDM-VAE (identity)"
    assert run(["table", *map(str, a_paths + b_paths), "--layout", "paired"]) == 0  # rich, for people
    out = capsys.readouterr().out
    assert "B - A" in out and "+++" in out and "yes" in out


def test_orderings_with_per_file_scores(tmp_path):
    a_paths, b_paths, _, _ = world(tmp_path)
    pairs = ordering_pairs(read_summaries(a_paths + b_paths))
    assert [c.key for c in pairs] == list(KEYS) and all(c.b.label == "SDM-VAE (identity)" and c.stats.significant for c in pairs)
    rows = list(csv.DictReader(io.StringIO(render(a_paths + b_paths, "csv", "orderings"))))
    assert {r["significant"] for r in rows} == {"1"} and all(float(r["file_ci_low"]) > 0 for r in rows)
    assert "no per-file scores" not in render(a_paths + b_paths, "markdown", "orderings")


def test_paired_layout_refusals_are_one_line(tmp_path, capsys):
    """Not two configurations: exit 2; a per_file.csv that is not its summary's: exit 1."""
    a_paths, b_paths, _, _ = world(tmp_path)
    vsc = fake_eval(
        tmp_path / "vsc-s0" / "eval-test", {"model": "vsc", "alpha": 0.5}, 0, {i: {k: 3.0 for k in KEYS} for i in IDS}
    )
    for args, code, words in (([*a_paths, *b_paths, vsc], 2, "exactly two configurations"), (a_paths, 2, "got 1")):
        assert run(["table", *map(str, args), "--layout", "paired"]) == code
        lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
        assert len(lines) == 1 and words in lines[0], lines
    (b_paths[0].parent / "per_file.csv").write_text((a_paths[0].parent / "per_file.csv").read_text().rsplit("\n", 2)[0] + "\n")
    assert run(["table", *map(str, a_paths + b_paths), "--layout", "paired"]) == 1
    lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(lines) == 1 and "not this evaluation's" in lines[0], lines


def test_old_evaluations_pesq_column_is_pesq_wb(tmp_path):
    """Evaluations from before pesq_nb existed call PESQ-WB `pesq` (summary and per_file.csv): paired
    like the new column, not left out as missing."""
    a_paths, b_paths, _, _ = world(tmp_path)
    new = by_key(paired_configurations(read_summaries(a_paths + b_paths)))["pesq_wb"]
    for p in a_paths + b_paths:
        edit_per_file(p, lambda rows: [{("pesq" if k == "pesq_wb" else k): v for k, v in r.items()} for r in rows])
        s = json.loads(p.read_text())
        s["metrics"]["pesq"] = s["metrics"].pop("pesq_wb")
        p.write_text(json.dumps(s))
    old = by_key(paired_configurations(read_summaries(a_paths + b_paths)))["pesq_wb"]
    assert (old.files, old.diff, old.file_ci, old.speaker_ci) == (40, new.diff, new.file_ci, new.speaker_ci)
