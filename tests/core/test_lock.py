"""One writer per output folder (sdmvae_cli.core.lock): a run, sweep, evaluation or report folder
that another process is writing is refused with one line naming that process; a lock left by
a killed process (kill -9) never blocks; a refused command leaves no folder behind. The second
writer is always a real second process (the kernel's flock, not a flag in this one)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sdmvae_cli.cli.app import run
from sdmvae_cli.core.errors import SdmvaeError
from sdmvae_cli.core.lock import LOCK_NAME, claim_folder, folder_lock, lock_path, lock_scope

TINY = ["--arch", "vae", "--latent", "4", "--hidden", "16", "--epochs", "1", "--batch-size", "64", "--device", "cpu", "--no-plot"]

#: holds the lock of argv[1] (inside, or beside with argv[2] == "beside") until stdin closes;
#: with argv[3] == "fork" it first forks a child that sleeps, as an evaluation worker would
HOLDER = """
import os, sys, time
from sdmvae_cli.core.lock import folder_lock
with folder_lock(sys.argv[1], beside=sys.argv[2] == "beside"):
    if sys.argv[3] == "fork":
        r, w = os.pipe()
        child = os.fork()
        if child == 0:  # fork's after-child hooks have run by now: say so, then live on
            os.write(w, b"1")
            time.sleep(120)
            os._exit(0)
        os.read(r, 1)  # the test starts once the worker runs (never on scheduling luck)
        print(child, flush=True)
    print("held", flush=True)
    sys.stdin.read()
"""


@contextlib.contextmanager
def another_process_holds(folder: Path, beside: bool = False, fork: bool = False):
    p = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder), "beside" if beside else "inside", "fork" if fork else "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        child = int(p.stdout.readline()) if fork else None
        assert p.stdout.readline().strip() == "held"
        yield p, child
    finally:
        if p.poll() is None:
            p.stdin.close()
        p.wait(timeout=60)


def refused(capsys, *args) -> str:
    """The command exits 1 with one line on stderr, nothing on stdout."""
    code = run([str(a) for a in args])
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 1 and len(lines) == 1 and not out.strip() and "Traceback" not in err, (code, err)
    return lines[0]


def test_a_second_writer_of_a_run_folder_is_refused_naming_the_holder(synthetic_prepared, tmp_path, capsys):
    run_dir = tmp_path / "run"
    with another_process_holds(run_dir) as (holder, _):
        line = refused(capsys, "train", synthetic_prepared, *TINY, "--out", run_dir)
        assert "in use by another sdmvae process" in line and f"pid {holder.pid} " in line, line
        assert {p.name for p in run_dir.iterdir()} == {LOCK_NAME}  # nothing trained into it
        info = json.loads((run_dir / LOCK_NAME).read_text())
        assert info["pid"] == holder.pid and info["host"] and info["started"]
    assert not run_dir.exists()  # the holder created the folder and left it empty: gone with its lock
    assert run(["train", str(synthetic_prepared), *TINY, "--out", str(run_dir)]) == 0  # free again
    assert (run_dir / "best.pt").is_file() and not (run_dir / LOCK_NAME).exists()


def test_a_resumed_run_is_locked_too(synthetic_prepared, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert run(["train", str(synthetic_prepared), *TINY, "--out", str(run_dir)]) == 0
    capsys.readouterr()
    before = (run_dir / "last.pt").read_bytes()
    with another_process_holds(run_dir):
        assert "in use" in refused(
            capsys, "train", synthetic_prepared, "--resume", run_dir, "--epochs", "2", "--device", "cpu", "--no-plot"
        )
    assert (run_dir / "last.pt").read_bytes() == before


def test_a_second_sweep_into_a_folder_in_use_is_refused(synthetic_prepared, tmp_path, capsys):
    """What `torchrun --nproc-per-node 2 -m sdmvae_cli sweep` does: the second rank finds the
    sweep folder locked by the first and stops at once, writing nothing."""
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps(
            {
                "common": {"model": "vae", "latent": 4, "hidden": [16], "epochs": 1, "batch_size": 64},
                "runs": [{"name": "a"}, {"name": "b", "seed": 1}],
            }
        )
    )
    out = tmp_path / "sw"
    with another_process_holds(out) as (holder, _):
        line = refused(capsys, "sweep", synthetic_prepared, spec, "--out", out, "--device", "cpu")
        assert "in use" in line and f"pid {holder.pid} " in line
        assert {p.name for p in out.iterdir()} == {LOCK_NAME}  # no member folder, no sweep.json
    assert run(["sweep", str(synthetic_prepared), str(spec), "--out", str(out), "--device", "cpu"]) == 0
    assert {p.name for p in out.iterdir()} == {"a", "b", "sweep.json"}


def test_a_member_folder_in_use_stops_the_sweep_before_it_trains(synthetic_prepared, tmp_path, capsys):
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps(
            {
                "common": {"model": "vae", "latent": 4, "hidden": [16], "epochs": 1, "batch_size": 64},
                "runs": [{"name": "a"}, {"name": "b", "seed": 1}],
            }
        )
    )
    out = tmp_path / "sw"
    with another_process_holds(out / "b"):
        assert "in use" in refused(capsys, "sweep", synthetic_prepared, spec, "--out", out, "--device", "cpu")
        assert {p.name for p in out.iterdir()} == {"b"} and not (out / "sweep.json").exists()


def test_an_evaluation_folder_in_use_is_refused(tmp_path):
    from sdmvae_cli.evaluation.evaluate import evaluate_folders

    (tmp_path / "ref").mkdir()
    (tmp_path / "est").mkdir()
    out = tmp_path / "scores"
    with (
        another_process_holds(out) as (holder, _),
        pytest.raises(SdmvaeError, match=f"in use by another sdmvae process \\(pid {holder.pid} "),
    ):
        evaluate_folders(tmp_path / "ref", tmp_path / "est", out)
    with pytest.raises(SdmvaeError, match="no audio files"):  # free again: the next check speaks
        evaluate_folders(tmp_path / "ref", tmp_path / "est", out)
    assert not out.exists()


def test_a_report_in_progress_is_refused(tmp_path, monkeypatch):
    """A report is built beside its folder and renamed into place, so its lock lies beside it."""
    from sdmvae_cli.report import page as report

    monkeypatch.setattr(report, "collect_runs", lambda paths: [])  # no evaluation needed to reach the lock
    out = tmp_path / "report"
    with another_process_holds(out, beside=True) as (holder, _):
        assert lock_path(out, beside=True).is_file()
        with pytest.raises(SdmvaeError, match=f"{re.escape(str(out))} is in use .*pid {holder.pid} "):
            report.make_report([tmp_path], out)
    assert not out.exists() and not lock_path(out, beside=True).exists()


def test_a_lock_left_by_a_killed_process_does_not_block(synthetic_prepared, tmp_path, capsys):
    run_dir = tmp_path / "run"
    with another_process_holds(run_dir) as (holder, _):
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    assert json.loads((run_dir / LOCK_NAME).read_text())["pid"] == holder.pid  # the stale file is still there
    assert run(["train", str(synthetic_prepared), *TINY, "--out", str(run_dir)]) == 0, capsys.readouterr().err
    assert (run_dir / "best.pt").is_file() and not (run_dir / LOCK_NAME).exists()


def test_stale_lock_files_in_a_sweep_folder_and_its_members_do_not_block(synthetic_prepared, tmp_path, capsys):
    """What a kill -9 leaves in a sweep folder and a member folder (a lock file nobody holds) is
    neither a lock nor content: the sweep starts, and afterwards no lock file is left."""
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps(
            {"common": {"model": "vae", "latent": 4, "hidden": [16], "epochs": 1, "batch_size": 64}, "runs": [{"name": "a"}]}
        )
    )
    out = tmp_path / "sw"
    (out / "a").mkdir(parents=True)
    for d in (out, out / "a"):
        (d / LOCK_NAME).write_text('{"pid": 999999999, "host": "gone", "started": "then", "command": "sdmvae sweep"}')
    assert run(["sweep", str(synthetic_prepared), str(spec), "--out", str(out), "--device", "cpu"]) == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.rglob("*") if p.name == LOCK_NAME) == [] and (out / "a" / "best.pt").is_file()


def test_a_worker_forked_by_a_killed_holder_does_not_keep_the_lock(tmp_path):
    """Evaluation workers are forked, so they inherit the holder's lock file; each closes its
    copy, so a worker that outlives a kill -9 of its parent does not keep the folder locked."""
    folder = tmp_path / "scores"
    with another_process_holds(folder, fork=True) as (holder, child):
        try:
            with pytest.raises(SdmvaeError, match="in use"), folder_lock(folder):
                pass
            holder.send_signal(signal.SIGKILL)
            holder.wait(timeout=60)
            os.kill(child, 0)  # the worker is still alive ...
            with folder_lock(folder):  # ... and the folder is free
                pass
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)


def test_nested_claims_in_one_process_and_cleanup(tmp_path):
    """The process holding a folder may lock it again (nested library calls); a folder the lock
    created is removed when it stays empty, and one that was written to is kept."""
    folder = tmp_path / "a" / "b"

    @lock_scope
    def work(write: bool) -> None:
        claim_folder(folder)
        claim_folder(folder)  # again, from the same process: not a second writer
        with folder_lock(folder):
            assert (folder / LOCK_NAME).is_file()
        assert (folder / LOCK_NAME).is_file()  # still held by the outer claim
        if write:
            (folder / "x").write_text("1")

    work(False)
    assert not (tmp_path / "a").exists()  # both levels it created, removed
    work(True)
    assert {p.name for p in folder.iterdir()} == {"x"}
    claim_folder(folder)  # outside any scope: only checked to be free
    assert not (folder / LOCK_NAME).exists()


def test_a_file_in_place_of_the_folder_is_one_clear_error(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(SdmvaeError, match="is a file"), folder_lock(tmp_path / "f"):
        pass


def test_a_lock_file_planted_as_a_link_is_not_followed(tmp_path, capsys):
    """A symlink in place of the lock file: refused in one line, its target untouched."""
    from sdmvae_cli.core.errors import SdmvaeError
    from sdmvae_cli.core.lock import LOCK_NAME, folder_lock

    victim = tmp_path / "victim"
    victim.write_text("keep me")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / LOCK_NAME).symlink_to(victim)
    with pytest.raises(SdmvaeError, match="cannot be created"):
        with folder_lock(tmp_path / "run"):
            pass
    assert victim.read_text() == "keep me"
