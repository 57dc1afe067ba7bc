"""A stack of one member (what `sdmvae train` runs) with and without vmap, in the same process.

    python benchmarks/single_run_path.py --models vae sdm --frames 20000 --epochs 3

Both paths are the same maths; the difference is vmap's per-op batching overhead, which on a
CPU costs more than these small matrix products. Epochs alternate between the two stacks and the
fastest of --epochs is kept for each, so background load hits both alike.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sweep_speed import make_stack  # noqa: E402

from sdmvae_cli.frames import FrameSource  # noqa: E402
from sdmvae_cli.nets import ModelConfig  # noqa: E402
from sdmvae_cli.stack import Stack  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["vae", "sdm"])
    ap.add_argument("--frames", type=int, default=20000)
    ap.add_argument("--epochs", type=int, default=3)
    a = ap.parse_args()
    dev = torch.device("cpu")
    frames = (np.random.default_rng(0).gamma(0.5, 1.0, (a.frames, 513)) * 1e-3).astype(np.float32)
    src = FrameSource.create(frames, dev, 1 << 40)
    val = src.buffer[:4096]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {a.frames} frames, batch 128")
    for model in a.models:
        cfg = ModelConfig(model=model, latent=64, **({"dictionary": "dct", "k": 64} if model == "sdm" else {}))
        fast = make_stack(1, cfg, src, val, dev, False)
        Stack.always_vmap = True
        slow = make_stack(1, cfg, src, val, dev, False)
        Stack.always_vmap = False
        times = {"fast": [], "vmap": []}
        for st in (fast, slow):
            st.run_epoch(0)
        for e in range(a.epochs):
            for name, st in (("fast", fast), ("vmap", slow)):
                t0 = time.perf_counter()
                st.run_epoch(e + 1)
                times[name].append(time.perf_counter() - t0)
        f, v = min(times["fast"]), min(times["vmap"])
        print(f"{model}: one member without vmap {a.frames / f:,.0f} frames/s, with vmap {a.frames / v:,.0f} frames/s "
              f"-> {v / f:.2f}x", flush=True)


if __name__ == "__main__":
    main()
