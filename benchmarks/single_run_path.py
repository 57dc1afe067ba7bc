"""A stack of one member (what `sdmvae train` runs) on the CPU, three ways, in the same process:

- ``engine``: what ``sdmvae train`` does now: no vmap, torch's fused Adam kernel;
- ``foreach-adam``: no vmap, the stacked Adam as multi-tensor foreach ops (what CUDA graphs capture);
- ``vmap``: vmap and foreach Adam (the path a one-member stack took before 2026-11-23).

    python benchmarks/single_run_path.py --models vae sdm --frames 20000 --epochs 3

All three are the same maths (to rounding). Epochs alternate between the stacks and the fastest
of --epochs is kept for each, so background load hits them alike.
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

from sdmvae_cli.data.frames import FrameSource  # noqa: E402
from sdmvae_cli.nets import ModelConfig  # noqa: E402
from sdmvae_cli.training.stack import Stack  # noqa: E402


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
        stacks = {"engine": make_stack(1, cfg, src, val, dev, False)}
        Stack.fused_adam = False
        stacks["foreach-adam"] = make_stack(1, cfg, src, val, dev, False)
        Stack.always_vmap = True
        stacks["vmap"] = make_stack(1, cfg, src, val, dev, False)
        Stack.always_vmap, Stack.fused_adam = False, True
        times: dict[str, list[float]] = {k: [] for k in stacks}
        for st in stacks.values():
            st.run_epoch(0)
        for e in range(a.epochs):
            for name, st in stacks.items():
                t0 = time.perf_counter()
                st.run_epoch(e + 1)
                times[name].append(time.perf_counter() - t0)
        best = {k: min(v) for k, v in times.items()}
        print(
            f"{model}: "
            + ", ".join(f"{k} {a.frames / t:,.0f} frames/s" for k, t in best.items())
            + f" -> engine {best['foreach-adam'] / best['engine']:.2f}x foreach-adam, {best['vmap'] / best['engine']:.2f}x vmap",
            flush=True,
        )


if __name__ == "__main__":
    main()
