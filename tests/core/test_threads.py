"""The thread policy (issue 23.2): --threads anywhere on the command line, auto = 1 thread or the
user's OMP_NUM_THREADS. What it buys is measured in
benchmarks/threads.py (docs/benchmarks.md), never timed here."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sdmvae_cli.cli.app import run, split_global_flags
from sdmvae_cli.core.threads import AUTO_THREADS, resolve_threads

PROBE = (
    "import sys, os; from sdmvae_cli.cli.app import run; code = run(sys.argv[1:]); import torch; "
    "print(torch.get_num_threads(), os.environ.get('OMP_WAIT_POLICY'), code)"
)


def probe(argv: list[str], **env: str) -> list[str]:
    """Run the CLI in a fresh process (torch not yet imported, as from the shell) and report the
    thread count torch then starts with, the wait policy and the exit status."""
    e = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")} | env
    r = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, env=e, check=True)
    return r.stdout.split()[-3:]


@pytest.mark.parametrize(
    "argv, rest, threads",
    [
        (["--threads", "3", "models"], ["models"], 3),
        (["models", "--threads=2", "--json"], ["models", "--json"], 2),
        (["models", "--threads", "auto", "-q"], ["models"], None),
        (["models", "--", "--threads", "4"], ["models", "--", "--threads", "4"], None),  # after -- it is an argument
    ],
)
def test_threads_is_a_global_option(argv, rest, threads):
    got, opts = split_global_flags(argv)
    assert got == rest and opts.threads == threads


@pytest.mark.parametrize(
    "argv",
    [
        ["--threads", "0", "models"],
        ["models", "--threads", "many"],
        ["models", "--threads"],
        ["models", "--threads=-1"],
        ["models", "--threads", "99999999"],
        ["models", "--threads", "2147483648"],
    ],
)
def test_a_bad_thread_count_is_a_usage_error(argv, capsys):
    assert run(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: --threads")


def test_auto_respects_the_users_omp_num_threads():
    assert resolve_threads(None, {}) == AUTO_THREADS == 1
    assert resolve_threads(None, {"OMP_NUM_THREADS": "3"}) == 3
    assert resolve_threads(None, {"OMP_NUM_THREADS": "junk"}) == AUTO_THREADS
    assert resolve_threads(2, {"OMP_NUM_THREADS": "3"}) == 2  # the option wins over the environment


def test_a_command_starts_torch_with_the_policy():
    """From the shell, torch is imported after the policy is set: its OpenMP runtime starts
    with the thread count; a user's wait policy is left alone."""
    assert probe(["models", "--json"]) == ["1", "None", "0"]
    assert probe(["models", "--json", "--threads", "2"]) == ["2", "None", "0"]
    assert probe(["models", "--json"], OMP_NUM_THREADS="2") == ["2", "None", "0"]
    assert probe(["models", "--json"], OMP_WAIT_POLICY="ACTIVE") == ["1", "ACTIVE", "0"]


def test_after_torch_is_imported_the_count_still_applies():
    import torch

    before = torch.get_num_threads()
    try:
        assert run(["models", "--json", "--threads", "3"]) == 0
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_the_command_line_does_not_import_torch_before_a_command_runs():
    """`sdmvae --help` stays fast (no torch import: 0.2 s, not 2 s) and the thread count reaches
    torch through the environment, before its runtime starts (the path probe() exercises)."""
    code = "import sys, sdmvae_cli.cli.app; print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "False"
