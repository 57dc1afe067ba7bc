"""Benchmark: torchrun on this machine's CPUs, 2 ranks against 1 process, measured in the same run.

    python benchmarks/distributed.py [--frames 30000] [--epochs 5] [--loads idle,busy] [--one-threads 2] [--out DIR]

Cases, each a whole process (wall clock, start-up and compile included) and its steady epoch
time from history.csv (epochs after the first):

- ``sweep``: 8 members (VAE 513-128-64, seeds 0-7, one stack) in one process (``--one-threads``, 2 by default) against
  ``torchrun --nproc-per-node 2`` (1 thread per rank, 4 members each);
- ``train``: one run at batch 128 in one process (2 threads) against a data-parallel run of 2
  ranks at 64 each (the same computation), compiled and eager;
- ``ddp``: a plain PyTorch loop over the same network (nn.Module, autograd, torch.optim.Adam)
  wrapped in DistributedDataParallel on 2 ranks at 64 each: the engine sdmvae did not use;
- ``allreduce``: the communication of one data-parallel step, an all-reduce of the network's
  gradients in one flat buffer (gloo, 2 ranks), per step.

Loads: ``idle``, and ``busy``: one other process spinning on one core throughout.
Figures in docs/benchmarks.md ("Scaling out").
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

CLI = [sys.executable, "-m", "sdmvae_cli"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
QUIET = ["--device", "cpu", "--no-plot", "--no-tensorboard"]


def _run(cmd: list[str], threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def _steady(history: Path) -> float:
    secs = [float(r["seconds"]) for r in csv.DictReader(open(history))]
    return sum(secs[1:]) / max(1, len(secs) - 1)


def _sweep(prep: Path, out: Path, epochs: int, threads: int = 2) -> dict[str, float]:
    spec = out / "sweep8.json"
    common = {"model": "vae", "latent": 64, "epochs": epochs, "patience": 100, "compile": "on"}
    spec.write_text(json.dumps({"common": common, "grid": {"name": "m{seed}", "seed": list(range(8))}}))
    one = _run(
        [*CLI, "--threads", str(threads), "sweep", str(prep), str(spec), "--out", str(out / "sw1"), *QUIET, "--overwrite"],
        threads,
    )
    two = _run(
        [*TORCHRUN, "-m", "sdmvae_cli", "sweep", str(prep), str(spec), "--out", str(out / "sw2"), *QUIET, "--overwrite"], 1
    )
    return {
        "one_wall": one,
        "two_wall": two,
        "one_epoch": _steady(out / "sw1/m0/history.csv"),
        "two_epoch": _steady(out / "sw2/m0/history.csv"),
    }


def _train(prep: Path, out: Path, epochs: int, compile_: str, threads: int = 2) -> dict[str, float]:
    model = ["--model", "vae", "--latent", "64", "--epochs", str(epochs), "--compile", compile_, *QUIET, "--overwrite"]
    a, b = out / f"t1-{compile_}", out / f"t2-{compile_}"
    one = _run([*CLI, "--threads", str(threads), "train", str(prep), *model, "--batch-size", "128", "--out", str(a)], threads)
    two = _run([*TORCHRUN, "-m", "sdmvae_cli", "train", str(prep), *model, "--batch-size", "64", "--out", str(b)], 1)
    return {"one_wall": one, "two_wall": two, "one_epoch": _steady(a / "history.csv"), "two_epoch": _steady(b / "history.csv")}


def _worker(kind: str, prep: str, epochs: int, out: str) -> None:
    """Under torchrun: a plain DDP loop (``ddp``), or timed all-reduces of the gradients (``allreduce``)."""
    import numpy as np
    import torch
    import torch.distributed as dist

    from sdmvae_cli.nets import ModelConfig, build_model

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = build_model(ModelConfig(model="vae", latent=64))
    if kind == "allreduce":
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        for _ in range(20):
            dist.all_reduce(flat)
        t = time.perf_counter()
        for _ in range(500):
            dist.all_reduce(flat)
        per = (time.perf_counter() - t) / 500
        if rank == 0:
            Path(out).write_text(json.dumps({"floats": flat.numel(), "seconds_per_allreduce": per}))
        dist.destroy_process_group()
        return
    data = torch.from_numpy(np.array(np.load(f"{prep}/train/frames.npy", mmap_mode="r")))
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.Adam(ddp.parameters(), lr=1e-4)
    gen, b, times = torch.Generator().manual_seed(0), 64, []
    for _ in range(epochs):
        t = time.perf_counter()
        perm = torch.randperm(len(data), generator=gen)
        for s in range(0, len(data) // (b * world) * b * world, b * world):
            x = data[perm[s + rank * b : s + (rank + 1) * b]]
            opt.zero_grad(set_to_none=True)
            ddp(x).total.mean().backward()
            opt.step()
        times.append(time.perf_counter() - t)
    if rank == 0:
        Path(out).write_text(json.dumps({"epoch_seconds": times}))
    dist.destroy_process_group()


def _torchrun_worker(kind: str, prep: Path, epochs: int, out: Path) -> dict:
    wall = _run([*TORCHRUN, __file__, "--worker", kind, "--prep", str(prep), "--epochs", str(epochs), "--out", str(out)], 1)
    return json.loads(out.read_text()) | {"wall": wall}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=30000)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--loads", default="idle,busy")
    ap.add_argument("--out", default="/tmp/sdmvae-bench-distributed")
    ap.add_argument("--worker", default=None)
    ap.add_argument("--prep", default=None)
    ap.add_argument("--one-threads", type=int, default=2, help="threads of the one-process baseline (sdmvae's default: 1)")
    a = ap.parse_args()
    if a.worker:
        return _worker(a.worker, a.prep, a.epochs, a.out)
    from sdmvae_cli.audio.synthetic import make_synthetic_prepared

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    prep = out / "prep"
    if not (prep / "prepare.json").exists():
        make_synthetic_prepared(prep, n_train=a.frames, n_val=a.frames // 10, n_test=100)
    results = {}
    for load in a.loads.split(","):
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if load == "busy" else None
        try:
            r = {"sweep8": _sweep(prep, out, a.epochs, a.one_threads)}
            for c in ("on", "off"):
                r[f"train-compile-{c}"] = _train(prep, out, a.epochs, c, a.one_threads)
            r["ddp"] = _torchrun_worker("ddp", prep, a.epochs, out / "ddp.json")
            r["allreduce"] = _torchrun_worker("allreduce", prep, a.epochs, out / "allreduce.json")
        finally:
            if hog is not None:
                hog.kill()
        results[load] = r
        _print(load, r, a.frames)
    (out / "results.json").write_text(json.dumps(results, indent=2))


def _print(load: str, r: dict, frames: int) -> None:
    print(f"== {load} ({os.cpu_count()} CPUs, {frames} training frames) ==")
    for case in ("sweep8", "train-compile-on", "train-compile-off"):
        c = r[case]
        print(
            f"{case:18s} 1 process: wall {c['one_wall']:6.1f} s, epoch {c['one_epoch']:6.2f} s | 2 ranks: wall {c['two_wall']:6.1f} s, "
            f"epoch {c['two_epoch']:6.2f} s | speed-up wall x{c['one_wall'] / c['two_wall']:.2f}, epoch x{c['one_epoch'] / c['two_epoch']:.2f}"
        )
    d = r["ddp"]["epoch_seconds"]
    print(f"{'ddp plain loop':18s} 2 ranks: epoch {sum(d[1:]) / max(1, len(d) - 1):6.2f} s (wall {r['ddp']['wall']:.1f} s)")
    ar = r["allreduce"]
    steps = frames // 128
    print(
        f"{'allreduce':18s} {ar['floats']} floats: {ar['seconds_per_allreduce'] * 1e6:.0f} us per step, "
        f"{ar['seconds_per_allreduce'] * steps:.2f} s per epoch of {steps} steps"
    )


if __name__ == "__main__":
    main()
