"""CPU: a stack of N members against the same N members trained one after another.

    python benchmarks/sweep_cpu_ratio.py --members 4 8 --frames 30000 --epochs 3 --rounds 3

Why a benchmark of its own: this machine's speed drifts by up to 2x within minutes, and a
single run sharing a process with compiled stacks runs slower than alone (measured: 3.7 against
2.7 ms a step). So every measurement is a fresh process, and each round measures, in
alternating order:

- ``stack``: one stack of N members (seeds 0..N-1), ``--compile`` as ``sdmvae sweep`` runs it
  on a CPU by default (on: the whole step compiled, ``Stack._whole_step_fn``);
- ``serial``: the same N members one after another, each a stack of one in its own process with
  ``sdmvae train``'s CPU default (compile off);
- ``serial-compiled``: the same, with ``--compile on`` (the fastest way to train them one at a
  time, at a compile per run).

An epoch here is what the trainer does per epoch: the training steps over --frames random
frames (batch 128) and one validation pass over a tenth as many. Times are per epoch after one
warm-up epoch (which holds the compile); the warm-up is printed too, since a sweep pays it once
per stack and a serial compiled run once per run. Prints one line per measurement, then per N
the ratio serial / stack for each round and its median.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sdmvae_cli.data.frames import FrameSource  # noqa: E402
from sdmvae_cli.nets import ModelConfig  # noqa: E402


def child(n: int, seed: int, compile_on: bool, frames: int, epochs: int, model: str) -> dict:
    """Time one stack of n members (seeds seed..seed+n-1) in this process."""
    from sweep_speed import make_stack, random_frames

    torch.manual_seed(0)
    data = random_frames(frames + frames // 10)
    src = FrameSource.create(data[:frames], torch.device("cpu"), 1 << 40)
    val = torch.from_numpy(data[frames:])
    kw = {"dictionary": "dct", "k": 64} if model == "sdm" else {}
    stack = make_stack(n, ModelConfig(model=model, latent=64, **kw), src, val, torch.device("cpu"), compile_on, seed=seed)
    times = []
    for e in range(epochs + 1):
        t = time.perf_counter()
        stack.run_epoch(e)
        stack.validate()
        times.append(time.perf_counter() - t)
    return {"warmup": times[0], "epoch": statistics.median(times[1:])}


def measure(n: int, seed: int, compile_on: bool, a: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        str(n),
        "--seed",
        str(seed),
        "--compile",
        "on" if compile_on else "off",
        "--frames",
        str(a.frames),
        "--epochs",
        str(a.epochs),
        "--model",
        a.model,
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--members", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--frames", type=int, default=30000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--model", default="vae")
    ap.add_argument("--kinds", default="stack,serial,serial-compiled")
    ap.add_argument("--child", type=int)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compile", choices=["on", "off"], default="on")
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.seed, a.compile == "on", a.frames, a.epochs, a.model)))
        return
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, model {a.model}, {a.frames} frames, "
        f"median of {a.epochs} epochs after a warm-up, {a.rounds} rounds",
        flush=True,
    )
    kinds = a.kinds.split(",")
    res: dict[tuple[int, str], list[dict]] = {}
    for r in range(a.rounds):
        for n in a.members:
            for kind in kinds if r % 2 == 0 else kinds[::-1]:
                if kind == "stack":
                    got = measure(n, 0, True, a)
                else:
                    parts = [measure(1, i, kind == "serial-compiled", a) for i in range(n)]
                    got = {"warmup": sum(p["warmup"] for p in parts), "epoch": sum(p["epoch"] for p in parts)}
                res.setdefault((n, kind), []).append(got)
                print(
                    f"round {r} members {n} {kind:>15s}: {got['epoch']:7.3f} s/epoch "
                    f"({n * a.frames / got['epoch']:8.0f} member-frames/s), warm-up epoch {got['warmup']:6.1f} s",
                    flush=True,
                )
    for n in a.members:
        if (n, "stack") not in res:
            continue
        for kind in kinds:
            if kind == "stack":
                continue
            ratios = [s["epoch"] / t["epoch"] for s, t in zip(res[(n, kind)], res[(n, "stack")])]
            print(
                f"members {n}: {kind} / stack per epoch = {', '.join(f'{x:.2f}' for x in ratios)} "
                f"(median {statistics.median(ratios):.2f}x)",
                flush=True,
            )


if __name__ == "__main__":
    main()
