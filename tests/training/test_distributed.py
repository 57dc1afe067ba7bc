"""Beyond one process: torchrun (gloo, 2 CPU ranks) for sweeps and data-parallel training.

Every launcher path runs for real here (`python -m torch.distributed.run --standalone`, two
processes on the CPU); the results are compared with the one-process runs of the same options.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sdmvae_cli.core.distributed import Launch, launch_from_env, rank_device
from sdmvae_cli.core.errors import UsageError
from sdmvae_cli.nets.checkpoint import read_checkpoint
from sdmvae_cli.training.distributed_sweep import share_stacks
from sdmvae_cli.training.sweep import run_sweep
from tests.conftest import cli, one_line

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "sdmvae_cli"]
QUIET = ["--no-plot", "--no-tensorboard", "--device", "cpu"]
SPEC = {
    "common": {"lr": 2e-3, "batch_size": 64, "epochs": 3, "patience": 50, "latent": 8, "compile": "off"},
    "grid": [{"name": "vae-s{seed}", "model": "vae", "seed": [0, 1, 2]}, {"name": "vsc-s{seed}", "model": "vsc", "seed": [0, 1]}],
}


def _torchrun(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([*TORCHRUN, *args], capture_output=True, text=True, env=env, timeout=600)
    if check:
        assert p.returncode == 0, p.stderr[-3000:]
    return p


def _history(run_dir: Path) -> list[dict[str, float]]:
    with open(run_dir / "history.csv") as f:
        return [
            {k: float(v) for k, v in row.items() if k in ("train_total", "val_total", "val_pm_total")}
            for row in csv.DictReader(f)
        ]


def _same_runs(a: Path, b: Path, rel: float = 1e-4) -> None:
    """Two runs of one computation: the same losses every epoch and the same weights, to float rounding."""
    ha, hb = _history(a), _history(b)
    assert len(ha) == len(hb)
    for ra, rb in zip(ha, hb):
        for k in ra:
            assert ra[k] == pytest.approx(rb[k], rel=rel, abs=1e-2), (k, ra, rb)
    wa, wb = read_checkpoint(a / "last.pt")["model_state"], read_checkpoint(b / "last.pt")["model_state"]
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-3, atol=1e-4)


# -- the plan: which rank trains what -------------------------------------------------------------


def test_shares_cover_every_member_once_and_balance():
    keys = ["a"] * 3 + ["b"] * 2 + ["c"] * 4 + ["d"]
    for world in (1, 2, 3, 4, 7, 16):
        shares = share_stacks(keys, world)
        assert len(shares) == world
        assert sorted(i for s in shares for i in s) == list(range(len(keys)))
        assert shares == share_stacks(keys, world)  # every rank computes the same plan
    two = share_stacks(keys, 2)
    assert sorted(len(s) for s in two) == [5, 5]  # c (4) + d (1) and a (3) + b (2)
    assert all(len({keys[i] for i in s}) <= 2 for s in two)  # stacks are kept whole when there are enough


def test_a_stack_is_split_when_ranks_outnumber_stacks():
    shares = share_stacks(["a"] * 8, 4)
    assert [len(s) for s in shares] == [2, 2, 2, 2]
    assert share_stacks(["a"], 3) == [[0], [], []]  # a lone member cannot be split: the other ranks idle


def test_launch_from_environment():
    assert launch_from_env({}) is None and launch_from_env({"WORLD_SIZE": "1"}) is None
    assert launch_from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}) == Launch(3, 4, 1)
    with pytest.raises(UsageError):
        launch_from_env({"WORLD_SIZE": "2", "RANK": "2"})
    assert rank_device("cpu", Launch(1, 2, 1)) == "cpu"
    if not torch.cuda.is_available():
        assert rank_device("auto", Launch(1, 2, 1)) == "auto"  # resolves to the CPU
    assert rank_device("cuda", Launch(1, 2, 1)) == "cuda:1"


def test_other_commands_refuse_a_launch(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    code, out, err = cli(capsys, "evaluate", str(tmp_path / "x.pt"), str(tmp_path))
    assert code == 2 and out == ""
    assert "only train and sweep run under torchrun" in one_line(err)


# -- torchrun on the CPU -------------------------------------------------------------------------


def _spec_file(tmp_path: Path, spec: dict) -> Path:
    p = tmp_path / "spec.json"
    p.write_text(json.dumps(spec))
    return p


def test_torchrun_sweep_equals_one_process(synthetic_prepared, tmp_path):
    """One stack of 4 members over 2 ranks: the stack is split (2 members each); every member
    equals the one-process sweep's."""
    one_stack = {**SPEC, "grid": [{"name": "vae-s{seed}", "model": "vae", "seed": [0, 1, 2, 3]}]}
    spec = _spec_file(tmp_path, one_stack)
    p = _torchrun("sweep", str(synthetic_prepared), str(spec), "--out", str(tmp_path / "dist"), *QUIET)
    names = ["vae-s0", "vae-s1", "vae-s2", "vae-s3"]
    # rank 0 prints the checkpoints and sweep.json once
    assert p.stdout.split() == [str(tmp_path / "dist" / n / "best.pt") for n in names] + [str(tmp_path / "dist" / "sweep.json")]
    summary = json.loads((tmp_path / "dist" / "sweep.json").read_text())
    assert [m["name"] for m in summary["members"]] == names and {m["status"] for m in summary["members"]} == {"finished"}
    assert [r["members"] for r in summary["ranks"]] == [names[:2], names[2:]] and summary["stacks"] == [2, 2]
    run_sweep(synthetic_prepared, spec, tmp_path / "one", device="cpu")
    assert json.loads((tmp_path / "one" / "sweep.json").read_text())["stacks"] == [4]
    for n in names:
        _same_runs(tmp_path / "dist" / n, tmp_path / "one" / n)


def test_a_refused_torchrun_sweep_changes_nothing(synthetic_prepared, tmp_path):
    """Every check of every member is made before rank 0 replaces an earlier sweep: a spec whose
    batch exceeds the split leaves the earlier sweep as it was, and the refusal is one line."""
    out = tmp_path / "sw"
    small = {**SPEC, "common": {**SPEC["common"], "epochs": 1}, "grid": [{"name": "old-s{seed}", "model": "vae", "seed": [0]}]}
    run_sweep(synthetic_prepared, _spec_file(tmp_path, small), out, device="cpu")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    bad = {**SPEC, "common": {**SPEC["common"], "batch_size": 100_000}}
    (tmp_path / "bad").mkdir()
    p = _torchrun(
        "sweep",
        str(synthetic_prepared),
        str(_spec_file(tmp_path / "bad", bad)),
        "--out",
        str(out),
        "--overwrite",
        *QUIET,
        check=False,
    )
    assert p.returncode != 0
    said = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(said) == 1 and "fewer than one batch" in said[0], said
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def _child_with_rank(parent: int, rank: int) -> int | None:
    """The pid of torchrun's worker of ``rank`` (Linux /proc)."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (d / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and f"RANK={rank}".encode() in env:
            return int(d.name)
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finding a rank's process needs Linux /proc")
def test_sweep_resumes_after_a_rank_is_killed(synthetic_prepared, tmp_path):
    """kill -9 rank 1 once a member of its share has a checkpoint; torchrun stops rank 0; a
    --resume launch finishes every member, equal to the uninterrupted one-process sweep."""
    spec = _spec_file(tmp_path, {**SPEC, "common": {**SPEC["common"], "epochs": 400}})
    out = tmp_path / "dist"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [*TORCHRUN, "sweep", str(synthetic_prepared), str(spec), "--out", str(out), *QUIET],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        deadline = time.monotonic() + 300
        while not (out / "vsc-s0" / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        pid = _child_with_rank(proc.pid, 1)
        assert pid is not None, "rank 1 is not running"
        os.kill(pid, signal.SIGKILL)
        assert proc.wait(timeout=120) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
    # torchrun stopped rank 0 with SIGTERM, a Ctrl-C to sdmvae: the sweep is recorded interrupted
    assert json.loads((out / "sweep.json").read_text())["interrupted"] is True
    done = {
        n: len(_history(out / n))
        for n in ("vae-s0", "vae-s1", "vae-s2", "vsc-s0", "vsc-s1")
        if (out / n / "history.csv").exists()
    }
    assert done.get("vsc-s0", 0) >= 1
    cap = str(max(done.values()) + 2)
    _torchrun("sweep", str(synthetic_prepared), str(spec), "--out", str(out), "--resume", "--epochs", cap, *QUIET)
    run_sweep(synthetic_prepared, spec, tmp_path / "one", device="cpu", epochs=int(cap))
    for n in ("vae-s0", "vae-s1", "vae-s2", "vsc-s0", "vsc-s1"):
        _same_runs(out / n, tmp_path / "one" / n)


def test_data_parallel_train_equals_one_process_at_the_whole_batch(synthetic_prepared, tmp_path):
    """2 ranks at batch 64 each = one process at batch 128, also across a --resume (compile on:
    the compiled step cut around the all-reduce)."""
    model = ["--model", "sdm", "--latent", "8", "--k", "12", "--lr", "2e-3", "--compile", "on", *QUIET]
    one, dp = tmp_path / "one", tmp_path / "dp"
    code = subprocess.run(
        [
            sys.executable,
            "-m",
            "sdmvae_cli",
            "train",
            str(synthetic_prepared),
            *model,
            "--batch-size",
            "128",
            "--epochs",
            "4",
            "--out",
            str(one),
        ],
        capture_output=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    ).returncode
    assert code == 0
    p = _torchrun("train", str(synthetic_prepared), *model, "--batch-size", "64", "--epochs", "2", "--out", str(dp))
    assert p.stdout.split() == [str(dp), str(dp / "best.pt")]  # rank 0 reports, once
    _torchrun("train", str(synthetic_prepared), "--resume", str(dp), "--epochs", "4", *QUIET)
    config = json.loads((dp / "config.json").read_text())
    assert config["train"]["batch_size"] == 128 and config["data_parallel_ranks"] == 2
    assert {h["engine"] for h in csv.DictReader(open(dp / "history.csv"))} == {"cpu:compiled-step+dp2"}
    _same_runs(dp, one)


def test_data_parallel_sequence_model_equals_one_process(tmp_path):
    """A DKF: 2 ranks at 8 tiles each = one process at 16 tiles (the ranks split each batch of
    tiles and its noise on the tiles' axis); its sweep members share out over the ranks too."""
    from sdmvae_cli.audio.synthetic import make_synthetic_prepared

    prep = make_synthetic_prepared(tmp_path / "prep", 2000, 500, 300, utterances=True)
    model = ["--model", "dkf", "--latent", "8", "--seq-len", "20", "--rnn-hidden", "16", "--compile", "off", "--epochs", "2"]
    one, dp = tmp_path / "one", tmp_path / "dp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "sdmvae_cli", "train", str(prep), *model, *QUIET, "--batch-size", "16", "--out", str(one)]
    assert subprocess.run(cmd, capture_output=True, env=env).returncode == 0
    _torchrun("train", str(prep), *model, *QUIET, "--batch-size", "8", "--out", str(dp))
    assert json.loads((dp / "config.json").read_text())["train"]["batch_size"] == 16
    _same_runs(dp, one)
    spec = _spec_file(
        tmp_path,
        {
            "common": {
                "model": "dkf",
                "latent": 8,
                "seq_len": 20,
                "rnn_hidden": 16,
                "batch_size": 8,
                "epochs": 2,
                "compile": "off",
            },
            "grid": [{"name": "d-s{seed}", "seed": [0, 1]}],
        },
    )
    _torchrun("sweep", str(prep), str(spec), "--out", str(tmp_path / "sw"), *QUIET)
    run_sweep(prep, spec, tmp_path / "sw1", device="cpu")
    for n in ("d-s0", "d-s1"):
        _same_runs(tmp_path / "sw" / n, tmp_path / "sw1" / n)
