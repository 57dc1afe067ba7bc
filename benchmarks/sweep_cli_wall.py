"""Wall time through the CLI on prepared data: `sdmvae sweep` of N members against the same N
runs as `sdmvae train` one after another (with its default compile, and with --compile off).

    python benchmarks/sweep_cli_wall.py out/prep5 --members 4 --epochs 8 [--cold-cache]

Everything a user waits for is in the figure: process start, reading the frames, the compile
(once per stack for the sweep, once per run for compiled single runs), validation, checkpoints
and loss.png. Each member is a VAE (m = 64) with seed i; early stopping is held off (patience
above the epoch count) so every run trains the same number of epochs. ``--cold-cache`` gives
each command a fresh inductor cache (a first compile on a new machine); by default the cache in
~/.cache or /tmp is shared, as it is for a user's second and later runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(cmd: list[str], env: dict) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("prepared")
    ap.add_argument("--members", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--cold-cache", action="store_true")
    a = ap.parse_args()
    cli = [sys.executable, "-m", "sdmvae_cli"]
    work = Path(tempfile.mkdtemp(prefix="sdmvae-wall-"))
    common = ["--device", "cpu", "--epochs", str(a.epochs)]

    def env() -> dict:
        e = dict(os.environ)
        if a.cold_cache:
            e["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(dir=work, prefix="inductor-")
        return e

    try:
        spec = work / "spec.json"
        spec.write_text(
            json.dumps(
                {
                    "common": {"model": "vae", "latent": 64, "patience": a.epochs + 1},
                    "runs": [{"name": f"s{i}", "seed": i} for i in range(a.members)],
                }
            )
        )
        got = {"sweep": timed([*cli, "sweep", a.prepared, str(spec), "--out", str(work / "sweep"), *common], env())}
        for label, extra in (("train, default compile", []), ("train --compile off", ["--compile", "off"])):
            got[label] = sum(
                timed(
                    [
                        *cli,
                        "train",
                        a.prepared,
                        "--out",
                        str(work / f"{label[:5]}{extra and 'off'}{i}"),
                        "--model",
                        "vae",
                        "--latent",
                        "64",
                        "--seed",
                        str(i),
                        "--patience",
                        str(a.epochs + 1),
                        *common,
                        *extra,
                    ],
                    env(),
                )
                for i in range(a.members)
            )
        print(f"{a.members} members x {a.epochs} epochs on {a.prepared}{' (cold inductor cache)' if a.cold_cache else ''}:")
        for label, secs in got.items():
            print(f"  {label:>24s}: {secs:7.1f} s  ({secs / got['sweep']:.2f}x the sweep)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
