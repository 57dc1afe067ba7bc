"""`sdmvae prepare` throughput: seconds of compute per hour of audio, and peak memory.

    python benchmarks/prepare_speed.py [--corpus ../shared/data/librispeech-clean-251] [-j 2]

Runs the real CLI in a child process (a fresh output directory each time) and reads the
child's peak resident memory from the OS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/librispeech-clean-251")
    ap.add_argument("-j", "--jobs", type=int, default=2)
    a = ap.parse_args()
    if not a.corpus.is_dir():
        sys.exit(f"corpus {a.corpus} not found")
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "sdmvae_cli", "prepare", "folder", str(a.corpus), tmp + "/p", "-j", str(a.jobs)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        secs = time.perf_counter() - t
        info = json.loads(Path(tmp, "p", "prepare.json").read_text())
    # ru_maxrss of children: the largest single child (KiB on Linux)
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    frames = sum(v["frames"] for v in info["splits"].values())
    hop = info["stft"]["hop_length"] / info["stft"]["sample_rate"]
    # audio duration from the corpus itself (before trimming)
    import soundfile as sf

    audio_h = sum(sf.info(str(p)).duration for p in a.corpus.rglob("*") if p.suffix in (".flac", ".wav")) / 3600
    print(
        json.dumps(
            {
                "corpus": str(a.corpus),
                "jobs": a.jobs,
                "cpus": os.cpu_count(),
                "audio_hours": round(audio_h, 3),
                "frames": frames,
                "trimmed_hours": round(frames * hop / 3600, 3),
                "wall_s": round(secs, 2),
                "s_per_audio_hour": round(secs / audio_h, 1),
                "peak_rss_mib_largest_process": round(peak_mib, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
