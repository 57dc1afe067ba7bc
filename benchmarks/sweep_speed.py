"""Stacked training throughput: aggregate member-frames/s against the number of members.

    python benchmarks/sweep_speed.py --device cuda --members 1 4 16 64 --frames 270000 --variants before,engine
    python benchmarks/sweep_speed.py --device cpu --members 1 4 8 --frames 60000 --sequential

Variants (--variants, timed in the same process, one after another per member count):
``engine`` is what `sdmvae sweep` runs (compile per --compile, fused Adam, permutations drawn in
threads, TF32 on CUDA); ``before`` is the engine as the third session measured it (foreach Adam,
permutations in turn, full fp32); ``no-tf32``, ``foreach``, ``serial-perm`` each take one
change back from ``engine``. --check trains one epoch of ``before`` and of ``no-tf32`` from the
same start and prints how far their weights end apart (the fused Adam is the same update).

Each point trains a stack of N members (vae or --model, m=64, batch 128) on random frames for
--epochs timed epochs after one warm-up epoch (CUDA graph capture, compilation). With
--sequential it also times the same members trained one after another (N stacks of one), in the
same run, and prints the ratio.
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

VARIANTS = {  # name -> (fused Adam, threaded permutations, TF32)
    "engine": (True, True, True),
    "before": (False, False, False),
    "no-tf32": (True, True, False),
    "foreach": (False, True, True),
    "serial-perm": (True, False, True),
}


def random_frames(n: int) -> np.ndarray:
    """n frames of 513 bins with a speech-like spread of power (Gamma(0.5) x 1e-3), the same for every caller."""
    rng = np.random.default_rng(0)
    return (rng.gamma(0.5, 1.0, (n, 513)) * 1e-3).astype(np.float32)


def make_stack(
    n: int,
    cfg: ModelConfig,
    src: FrameSource,
    val: torch.Tensor,
    device: torch.device,
    compile_loss: bool,
    variant: str = "engine",
    seed: int = 0,
) -> Stack:
    fused, threaded, tf32 = VARIANTS[variant]
    Stack.fused_adam, Stack.threaded_permutations = fused, threaded
    members = []
    seeds = range(seed, seed + n)
    for i in seeds:
        m = Member(f"m{i}", cfg, TrainOptions(seed=i, tf32=tf32), Path("."))
        m.perm_gen = torch.Generator().manual_seed(i)
        m.noise_gen = torch.Generator(device=device).manual_seed(1000 + i)
        members.append(m)
    return Stack(
        members,
        [init_state(cfg, i) for i in seeds],
        [None] * n,
        src,
        val,
        device,
        use_graph=device.type == "cuda",
        compile_loss=compile_loss,
    )


def time_epochs(stack: Stack, epochs: int) -> float:
    stack.run_epoch(0)
    if stack.device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for e in range(epochs):
        stack.run_epoch(e + 1)
    if stack.device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / epochs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--members", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--frames", type=int, default=270000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--model", default="vae")
    ap.add_argument("--compile", choices=["on", "off"], default="off")
    ap.add_argument("--sequential", action="store_true")
    ap.add_argument("--variants", default="engine", help="comma-separated: " + ", ".join(VARIANTS))
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args()
    device = torch.device(a.device)
    frames = random_frames(a.frames)
    src = FrameSource.create(frames, device, 1 << 40)
    val = src.buffer[:4096]
    kw = {"dictionary": "dct", "k": 64} if a.model == "sdm" else {}
    cfg = ModelConfig(model=a.model, latent=64, **kw)
    print(
        f"device {device} {torch.cuda.get_device_name() if device.type == 'cuda' else ''} torch {torch.__version__} "
        f"model {a.model} frames {a.frames} compile {a.compile}"
    )
    if a.check:
        check(cfg, src, val, device, a.compile == "on")
    for n in a.members:
        first = None
        for variant in a.variants.split(","):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            secs = time_epochs(make_stack(n, cfg, src, val, device, a.compile == "on", variant), a.epochs)
            peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
            first = first or secs
            line = (
                f"{variant:>12s} members {n:3d}: {secs:7.3f} s/epoch, aggregate {n * a.frames / secs / 1e6:7.2f} M frames/s, "
                f"peak {peak:8.0f} MiB, {first / secs:5.2f}x the first variant"
            )
            if a.sequential:
                seq = sum(
                    time_epochs(make_stack(1, cfg, src, val, device, a.compile == "on", variant), a.epochs) for _ in range(n)
                )
                line += f"; one after another {seq:7.3f} s -> stacked is {seq / secs:4.2f}x faster"
            print(line, flush=True)


def check(cfg: ModelConfig, src: FrameSource, val: torch.Tensor, device: torch.device, compile_loss: bool) -> None:
    """One epoch of 4 members from the same start with the foreach and the fused Adam (both fp32)."""
    out = {}
    for variant in ("before", "no-tf32"):
        st = make_stack(4, cfg, src, val, device, compile_loss, variant)
        st.run_epoch(0)
        out[variant] = {k: v.detach().clone() for k, v in st.params.items()}
    start = init_state(cfg, 0)
    diff = max((out["before"][k] - out["no-tf32"][k]).abs().max().item() for k in out["before"])
    moved = max((out["before"][k][0].cpu() - start[k]).abs().max().item() for k in out["before"])
    print(
        f"check: after one epoch, foreach vs fused Adam weights differ by at most {diff:.2e} (weights moved {moved:.2e})",
        flush=True,
    )


if __name__ == "__main__":
    main()
