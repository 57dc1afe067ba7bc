"""Ten differently shaped stacks compiled one after another in one process (CPU is enough).

    python benchmarks/compile_stacks.py              # each stack compiles (seconds per first epoch)
    python benchmarks/compile_stacks.py --no-reset   # without the stack's dynamo reset

torch.compile caches per code object, and the stack's loss closure is one code object for every
stack of a process: past dynamo's recompile limit (8) the later stacks silently ran eager (on an
H100, 1.5-1.8 s per 900k-frame epoch instead of 0.8). The stack resets dynamo before compiling;
with --no-reset the ninth stack prints "hit config.recompile_limit" and its first epoch takes no
compile time. docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sdmvae_cli.data.frames import FrameSource  # noqa: E402
from sdmvae_cli.nets import ModelConfig  # noqa: E402
from sdmvae_cli.training.options import TrainOptions  # noqa: E402
from sdmvae_cli.training.stack import Member, Stack, init_state  # noqa: E402

CONFIGS = [
    dict(model="vae"),
    dict(model="sdm", k=8),
    dict(model="vsc"),
    dict(model="threshold"),
    dict(model="threshold", learn_threshold=True),
    dict(model="laplace"),
    dict(model="cauchy"),
    dict(model="sdm", dictionary="learned", k=8),
    dict(model="vae", latent=6),
    dict(model="sdm", k=6, latent=6),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-reset", action="store_true")
    a = ap.parse_args()
    if a.no_reset:
        torch._dynamo.reset = lambda: None
    torch.set_num_threads(1)
    frames = (np.random.default_rng(0).gamma(0.5, 1.0, (2048, 513)) * 1e-3).astype(np.float32)
    src = FrameSource.create(frames, torch.device("cpu"), 1 << 40)
    for k, kw in enumerate(CONFIGS):
        cfg = ModelConfig(**{"latent": 8, **kw})
        m = Member("m", cfg, TrainOptions(seed=k), Path("."))
        m.perm_gen, m.noise_gen = torch.Generator().manual_seed(k), torch.Generator().manual_seed(k)
        st = Stack(
            [m], [init_state(cfg, k)], [None], src, src.buffer[:256], torch.device("cpu"), use_graph=False, compile_loss=True
        )
        t = time.perf_counter()
        st.run_epoch(0)
        print(f"stack {k} ({kw}): first epoch {time.perf_counter() - t:.2f} s", flush=True)


if __name__ == "__main__":
    main()
