"""Training wall time by thread policy, on an idle machine and beside one busy process.

    python benchmarks/threads.py PREPARED_DIR [--rounds 2] [--epochs 2] [--json docs/bench-data/threads.jsonl]

Each figure is a whole process (``python -m sdmvae_cli ... train|sweep``), timed from start to
exit. Policies:

- ``torch-default``: what sdmvae did before ``--threads``: torch imported before the CLI, so
  its OpenMP runtime starts with torch's own defaults (one thread per core, spin-waiting), and
  2 intra-op threads;
- ``threads=1``: ``--threads 1``, today's ``auto``;
- ``threads=2,passive``: ``--threads 2`` with ``OMP_WAIT_POLICY=PASSIVE`` (idle OpenMP threads
  sleep instead of spinning: the remedy the spin-waiting theory suggests).

Loads: ``idle``, and ``busy``: one other process spinning on one core for the whole
measurement (a browser tab, an ``evaluate -j 0`` beside it). Ratios are against
``torch-default`` measured in the same round and load. Jobs: a single VAE run
(``--compile off``) and a 3-member sweep (VAE, SDM-VAE DCT, VSC; ``--compile off``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

POLICIES = {  # name -> (flags, torch imported first, environment)
    "torch-default": (["--threads", "2"], True, {}),
    "threads=1": (["--threads", "1"], False, {}),
    "threads=2,passive": (["--threads", "2"], False, {"OMP_WAIT_POLICY": "PASSIVE"}),
}
SPEC = {
    "common": {"latent": 64, "compile": "off"},
    "runs": [
        {"name": "vae", "model": "vae"},
        {"name": "sdm", "model": "sdm", "dictionary": "dct"},
        {"name": "vsc", "model": "vsc"},
    ],
}


def command(job: str, prep: Path, out: Path, epochs: int, flags: list[str], torch_first: bool) -> list[str]:
    if job == "train":
        args = [
            "train",
            str(prep),
            "--arch",
            "vae",
            "--epochs",
            str(epochs),
            "--compile",
            "off",
            "--device",
            "cpu",
            "--no-plot",
            "--out",
            str(out),
        ]
    else:
        spec = out.parent / "spec.json"
        spec.write_text(json.dumps(SPEC))
        args = ["sweep", str(prep), str(spec), "--out", str(out), "--epochs", str(epochs), "--device", "cpu"]
    argv = [*args, *flags, "-q"]
    if torch_first:  # the OpenMP runtime starts before sdmvae can set a policy: torch's defaults
        code = f"import torch, sys; from sdmvae_cli.cli.app import run; sys.exit(run({argv!r}))"
        return [sys.executable, "-c", code]
    return [sys.executable, "-m", "sdmvae_cli", *argv]


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_WAIT_POLICY"):
        env.pop(var, None)
    return env | extra


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=clean_env(env), stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("prepared", type=Path)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--jobs", default="train,sweep")
    ap.add_argument("--loads", default="idle,busy")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    rows = []
    for load in a.loads.split(","):
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if load == "busy" else None
        try:
            for job in a.jobs.split(","):
                for rnd in range(a.rounds):
                    base = None
                    for name, (flags, torch_first, env) in POLICIES.items():
                        with tempfile.TemporaryDirectory() as tmp:
                            s = timed(command(job, a.prepared, Path(tmp) / "out", a.epochs, flags, torch_first), env)
                        base = s if base is None else base
                        row = {
                            "load": load,
                            "job": job,
                            "round": rnd,
                            "policy": name,
                            "seconds": round(s, 2),
                            "speedup_vs_torch_default": round(base / s, 2),
                            "cpus": os.cpu_count(),
                            "machine": platform.processor() or platform.machine(),
                        }
                        rows.append(row)
                        print(json.dumps(row), flush=True)
        finally:
            if hog is not None:
                hog.kill()
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        with a.json.open("a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    for load, job in sorted({(r["load"], r["job"]) for r in rows}):
        for name in POLICIES:
            sel = [r for r in rows if (r["load"], r["job"], r["policy"]) == (load, job, name)]
            print(
                f"{load:5s} {job:6s} {name:18s} median {statistics.median(r['seconds'] for r in sel):7.1f} s  "
                f"speedup {[r['speedup_vs_torch_default'] for r in sel]}",
                file=sys.stderr,
            )


if __name__ == "__main__":
    main()
