"""Peak resident memory of `sdmvae resynth` against the length of the file (issue 23, point 18).

    python benchmarks/resynth_memory.py [--minutes 0.33 10 20 40] [--model NAME] [--save-codes] [--out DIR]

Each file is made by tiling the first utterances of ../shared/data/dev/librispeech (16 kHz
FLAC, 16-bit), and each `resynth` runs in a fresh process (`python -m sdmvae_cli`, one torch
thread) whose peak RSS is read with getrusage(RUSAGE_CHILDREN) -- the figure `/usr/bin/time -v`
prints as "Maximum resident set size". Prints one JSON line per file. To measure another
version of the package, run this script with PYTHONPATH pointing at its checkout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dev" / "librispeech"


def tiled(minutes: float, out: Path) -> Path:
    """``minutes`` of real speech: the first six LibriSpeech utterances, repeated."""
    x = np.concatenate([sf.read(str(f), dtype="float32")[0] for f in sorted(SHARED.glob("*/*.flac"))[:6]])
    n = int(minutes * 60 * 16000)
    sf.write(str(out), np.tile(x, -(-n // x.size))[:n], 16000, subtype="PCM_16")
    return out


#: runs the command and prints its peak RSS: getrusage(RUSAGE_CHILDREN) of a fresh parent
#: (of this script it would be the largest child so far)
WRAPPER = (
    "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
    "sys.stderr.write(r.stderr); print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def peak_rss(args: list[str]) -> tuple[int, float]:
    """(peak RSS in bytes, wall seconds) of one command in a fresh child process."""
    t = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-c", WRAPPER, *args], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    wall = time.perf_counter() - t
    code, kb = r.stdout.split()
    if code != "0":
        raise SystemExit(f"{' '.join(args)} failed: {r.stderr.strip()}")
    return int(kb) * (1 if sys.platform == "darwin" else 1024), wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, nargs="+", default=[0.33, 10, 20, 40])
    ap.add_argument("--model", default=None)
    ap.add_argument("--save-codes", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="Where the files go (default: a temporary folder).")
    a = ap.parse_args()
    out = a.out or Path(tempfile.mkdtemp(prefix="resynth-memory-"))
    out.mkdir(parents=True, exist_ok=True)
    for minutes in sorted(a.minutes):
        src = tiled(minutes, out / f"in-{minutes:g}min.flac")
        dst = out / f"out-{minutes:g}min.wav"
        dst.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "sdmvae_cli", "resynth", str(src), str(dst)] + (["-m", a.model] if a.model else [])
        rss, wall = peak_rss(cmd + (["--save-codes", "--overwrite"] if a.save_codes else []))
        print(
            json.dumps(
                {
                    "minutes": minutes,
                    "peak_rss_mb": round(rss / 2**20),
                    "wall_s": round(wall, 1),
                    "save_codes": a.save_codes,
                    "cpus": os.cpu_count(),
                    "machine": platform.processor() or platform.machine(),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
