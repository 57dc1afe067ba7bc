"""A synthetic prepared directory (speech-like log-normal power frames) for speed benchmarks.

Speed does not depend on the values, only on the shapes; this lets the training benchmark run
on machines with no corpus (the GPU machine) at the paper's scale (900k frames).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sdmvae_cli.stft import StftConfig


def make_synthetic_prepared(out: Path, n_train: int, n_val: int, seed: int = 0) -> Path:
    cfg = StftConfig()
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    # a smooth spectral envelope per "utterance" times chi-square-like fluctuations
    env = np.exp(-np.linspace(0, 8, cfg.n_bins, dtype=np.float32))
    for split, n in (("train", n_train), ("validation", n_val), ("test", 1024)):
        d = out / split
        d.mkdir(exist_ok=True)
        arr = np.lib.format.open_memmap(d / "frames.npy", mode="w+", dtype=np.float32, shape=(n, cfg.n_bins))
        for s in range(0, n, 65536):
            m = min(65536, n - s)
            gain = rng.lognormal(0, 2, size=(m, 1)).astype(np.float32)
            arr[s : s + m] = gain * env * rng.exponential(1.0, size=(m, cfg.n_bins)).astype(np.float32)
        arr.flush()
        (d / "manifest.jsonl").write_text("")
    (out / "prepare.json").write_text(json.dumps({"stft": cfg.to_dict(), "fingerprint": f"synthetic-{n_train}-{n_val}-{seed}"}))
    return out
