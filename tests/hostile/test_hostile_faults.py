"""Faults that need a real process: a metric that segfaults, Ctrl-C (SIGINT to the process
group, as a terminal sends it) and kill -9 in the middle of a run, then the same command again.

Asserts: the right exit status (1 failure, 130 interrupted), one line, nothing finished lost,
no temporary file left behind after the re-run, and the re-run completes.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import write_wav

from sdmvae_cli.audio.synthetic import source_filter_speech

CLI = [sys.executable, "-m", "sdmvae_cli"]
ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}


def start(*args) -> subprocess.Popen:
    # a session of its own: os.killpg reaches the command and its workers, like Ctrl-C in a terminal
    return subprocess.Popen(
        [*CLI, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, env=ENV
    )


TINY_DATA = "warning: the train split holds"  # the tiny-data warning of the synthetic split, not an error line


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, env=ENV, timeout=300)


def wait_for(cond, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while not cond():
        if proc.poll() is not None:
            pytest.fail(f"the command ended (exit {proc.returncode}) before the moment to interrupt it: {proc.stderr.read()}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            pytest.fail("timed out waiting for the moment to interrupt")
        time.sleep(0.02)


def signal_group(proc: subprocess.Popen, sig: int) -> tuple[int, str]:
    os.killpg(proc.pid, sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def journal_rows(path: Path) -> int:
    return max(0, len(path.read_text().splitlines()) - 1) if path.exists() else 0


@pytest.fixture(scope="module")
def speech_folder(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("speech")
    for i in range(10):
        write_wav(d / f"u{i:02d}.wav", source_filter_speech(3.0, seed=100 + i))
    return d


# -- a metric that kills its process -------------------------------------------------------
@pytest.mark.parametrize("jobs", ["1", "2"])
def test_pesq_segfault_on_a_long_utterance_costs_that_file_only(tmp_path, jobs):
    """pesq segfaults on utterances of ~2 min or more (more than 50 speech segments overflow its
    arrays, see sdmvae_cli.evaluation.metrics): that file's PESQ only, its STOI/ESTOI/SI-SDR are kept."""
    ref, est = tmp_path / "ref", tmp_path / "est"
    x = source_filter_speech(2.0, seed=1)
    write_wav(ref / "a_short.wav", x)
    write_wav(est / "a_short.wav", x)
    burst = np.concatenate([source_filter_speech(1.0, seed=2), np.zeros(16000, dtype=np.float32)])
    long = np.tile(burst, 65)  # 130 s: 65 utterances, past what pesq's C code copes with
    write_wav(ref / "b_long.wav", long)
    write_wav(est / "b_long.wav", long + 0.01 * np.random.default_rng(0).standard_normal(long.size).astype(np.float32))
    write_wav(ref / "c_short.wav", x[::-1].copy())
    write_wav(est / "c_short.wav", x[::-1].copy())
    r = run(
        "evaluate", "--ref", ref, "--est", est, "--out", tmp_path / "ev", "-j", jobs, "--json"
    )  # no hang: run() has a timeout
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["scored"] == 3 and s["failed"] == 0 and s["metric_failed"] == {"pesq_nb": 1, "pesq_wb": 1}
    (fail,) = s["metric_failures"]
    assert fail["id"] == "b_long" and "SIGSEGV" in fail["reason"] and "PESQ" in fail["reason"]
    assert s["metrics"]["pesq_nb"]["n"] == 2 and s["metrics"]["estoi"]["n"] == s["metrics"]["si_sdr"]["n"] == 3
    assert "Traceback" not in r.stderr and "BrokenProcessPool" not in r.stderr
    assert [line for line in r.stderr.splitlines() if "b_long" in line] == [f"warning: b_long: {fail['reason']}"]
    assert not (tmp_path / "ev" / "per_file.partial.jsonl").exists()


# -- Ctrl-C and kill -9 in evaluate --------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_evaluate_interrupted_then_continued(speech_folder, tmp_path, sig):
    ev = tmp_path / "ev"
    journal = ev / "per_file.partial.jsonl"
    args = ("evaluate", "--ref", speech_folder, "--est", speech_folder, "--out", ev, "-j", "1")
    p = start(*args)
    wait_for(lambda: journal_rows(journal) >= 2, p)
    code, err = signal_group(p, sig)
    assert not (ev / "summary.json").exists() and not (ev / "per_file.csv").exists()  # no output that looks complete
    kept = journal_rows(journal)
    assert 2 <= kept < 10
    if sig == signal.SIGINT:
        lines = err.strip().splitlines()
        assert code == 130 and len(lines) == 1 and "interrupted" in lines[0] and "run the same command again" in lines[0], err
    else:
        assert code == -signal.SIGKILL
    # mark one kept row: the re-run must reuse it, not recompute it
    lines = journal.read_text().splitlines()
    row = json.loads(lines[1])
    row["si_sdr"] = 999.0
    lines[1] = json.dumps(row)
    journal.write_text("\n".join(lines) + "\n")
    r = run(*args)
    assert r.returncode == 0, r.stderr
    rows = {x["id"]: x for x in csv.DictReader(open(ev / "per_file.csv"))}
    assert len(rows) == 10 and float(rows[row["id"]]["si_sdr"]) == 999.0
    assert not journal.exists() and not list(ev.glob(".*.tmp"))


def test_a_journal_of_another_evaluation_is_not_reused(speech_folder, tmp_path):
    ev = tmp_path / "ev"
    ev.mkdir()
    (ev / "per_file.partial.jsonl").write_text(
        json.dumps({"journal": "sdmvae-evaluate", "identity": {"kind": "other"}})
        + "\n"
        + json.dumps({"id": "u00", "path": "x", "si_sdr": 999.0})
        + "\n"
    )
    r = run("evaluate", "--ref", speech_folder, "--est", speech_folder, "--out", ev, "-j", "2")
    assert r.returncode == 0, r.stderr
    rows = {x["id"]: x for x in csv.DictReader(open(ev / "per_file.csv"))}
    assert float(rows["u00"]["si_sdr"]) > 100 and float(rows["u00"]["si_sdr"]) != 999.0  # recomputed (identical pair)


# -- kill -9 and Ctrl-C in prepare ---------------------------------------------------------
@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("corpus")
    for s in range(3):
        for u in range(8):
            write_wav(d / f"s{s}" / f"u{u}.wav", source_filter_speech(3.0, seed=10 * s + u))
    return d


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_prepare_interrupted_then_rerun(corpus, tmp_path, sig):
    out = tmp_path / "p"
    args = ("prepare", "folder", corpus, out, "--val-speakers", "1", "--test-speakers", "1")
    p = start(*args)
    wait_for(lambda: any((out / "train").glob(".frames.raw.*.tmp")), p)
    code, err = signal_group(p, sig)
    if sig == signal.SIGINT:
        lines = err.strip().splitlines()
        assert code == 130 and lines == ["interrupted"], err
    else:
        assert code == -signal.SIGKILL and any((out / "train").glob(".frames.raw.*.tmp"))  # what kill -9 leaves
    assert not (out / "prepare.json").exists()
    r = run(*args)
    assert r.returncode == 0, r.stderr
    assert not list(out.rglob("*.tmp")) and not list(out.rglob("frames.raw"))
    for split in ("train", "validation", "test"):
        rows = [json.loads(line) for line in (out / split / "manifest.jsonl").read_text().splitlines()]
        assert sum(r["n_frames"] for r in rows) == np.load(out / split / "frames.npy", mmap_mode="r").shape[0]


# -- Ctrl-C and kill -9 in train -----------------------------------------------------------
@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    from sdmvae_cli.audio.synthetic import make_synthetic_prepared

    return make_synthetic_prepared(tmp_path_factory.mktemp("prep") / "p", 1000, 200, 100)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_train_interrupted_then_resumed(prepared, tmp_path, sig):
    run_dir = tmp_path / "run"
    common = ("--device", "cpu", "--no-plot", "--epochs", "300", "--lr", "1e-3", "--batch-size", "64")
    p = start("train", prepared, "--model", "vae", "--latent", "8", "--out", run_dir, *common)
    wait_for(lambda: (run_dir / "last.pt").exists(), p)
    code, err = signal_group(p, sig)
    if sig == signal.SIGINT:
        lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("epoch", TINY_DATA))]
        assert code == 130 and len(lines) == 1 and f"--resume {run_dir}" in lines[0], err
    else:
        assert code == -signal.SIGKILL
    from sdmvae_cli.nets.checkpoint import read_checkpoint

    done = read_checkpoint(run_dir / "last.pt")["epoch"]
    r = run("train", prepared, "--out", run_dir, *common)  # the same command: refused, the run kept
    assert r.returncode == 1 and "--resume" in r.stderr and read_checkpoint(run_dir / "last.pt")["epoch"] == done
    r = run("train", prepared, "--resume", run_dir, "--device", "cpu", "--no-plot", "--epochs", str(done + 2))
    assert r.returncode == 0, r.stderr
    assert read_checkpoint(run_dir / "last.pt")["epoch"] == done + 1 and not list(run_dir.glob(".*.tmp"))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_sweep_interrupted_then_resumed(prepared, tmp_path, sig):
    """Ctrl-C or kill -9 in the middle of a stacked sweep: every member keeps a loadable last.pt,
    and `--resume` continues each of them where its last completed epoch left it."""
    from sdmvae_cli.nets.checkpoint import read_checkpoint

    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps(
            {
                "common": {"model": "vae", "latent": 8, "lr": 1e-3, "batch_size": 64, "epochs": 300},
                "runs": [{"name": "a", "seed": 0}, {"name": "b", "seed": 1}],
            }
        )
    )
    out = tmp_path / "sw"
    p = start("sweep", prepared, spec, "--out", out, "--device", "cpu")
    wait_for(lambda: all((out / n / "last.pt").exists() for n in "ab"), p)
    time.sleep(0.3)  # land somewhere inside an epoch or a checkpoint write
    code, err = signal_group(p, sig)
    if sig == signal.SIGINT:
        lines = [
            line
            for line in err.splitlines()
            if line.strip() and not re.match(r"\s*\S+ epoch +\d+ ", line) and not line.startswith(TINY_DATA)
        ]
        assert code == 130 and len(lines) == 1 and "--resume" in lines[0], err
    else:
        assert code == -signal.SIGKILL
    done = {n: read_checkpoint(out / n / "last.pt")["epoch"] for n in "ab"}
    target = max(done.values()) + 2
    r = run("sweep", prepared, spec, "--out", out, "--device", "cpu", "--resume", "--epochs", target)
    assert r.returncode == 0, r.stderr
    for n in "ab":
        ck = read_checkpoint(out / n / "last.pt")
        assert ck["epoch"] == target - 1 and [h["epoch"] for h in ck["history"]] == list(range(target))
        assert not list((out / n).glob(".*.tmp"))
    sw = json.loads((out / "sweep.json").read_text())
    assert [m["status"] for m in sw["members"]] == ["finished", "finished"]
