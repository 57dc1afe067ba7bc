"""Training throughput of the sequence models (frames/s) against a frame-wise VAE and against a
plain PyTorch loop of the same model, in the same process and run:

- ``engine``: what ``sdmvae train`` runs (a stack of one member: functional_call, noise drawn
  from the run's generator a block at a time, torch's fused Adam);
- ``plain``: the textbook loop over the same model object: ``model.loss(x).total.mean()``,
  ``backward()``, ``torch.optim.Adam.step()``, the same batches (one gather per step);
- ``vae`` (engine): the frame-wise 513-128-m VAE on the same frames, batch 128 frames.

    python benchmarks/sequence_speed.py --families dkf srnn rvae --frames 64000 --epochs 3 --loads idle,busy

Epochs alternate between the contenders and the fastest of ``--epochs`` is kept for each, so a
background load hits them alike; ``busy`` adds one other process spinning on one core.
frames/s counts frames (a sequence of 50 is 50 frames). All eager on the CPU (``--compile off``,
the sequence families' ``auto``), both contenders at the family's learning rate (2e-3). The
stack sets ``torch.set_flush_denormal(True)`` on a CPU (what ``sdmvae train`` does), so the plain
loop runs with it too; ``--denormals`` keeps subnormal floats for both, to show their cost.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sweep_speed import make_stack  # noqa: E402

from sdmvae_cli.audio.synthetic import make_synthetic_prepared  # noqa: E402
from sdmvae_cli.data.frames import FrameSource, open_frames  # noqa: E402
from sdmvae_cli.nets import REGISTRY, ModelConfig, build_model  # noqa: E402
from sdmvae_cli.training.sequence_data import data_for, sequence_indexes  # noqa: E402


class PlainLoop:
    """The same model trained the textbook way, on the same tiles and batch size."""

    def __init__(self, cfg: ModelConfig, src, batch: int, lr: float):
        torch.manual_seed(0)
        self.model, self.src, self.batch = build_model(cfg).train(), src, batch
        self.opt = torch.optim.Adam(self.model.parameters(), lr=lr)
        self.gen = torch.Generator().manual_seed(0)

    def run_epoch(self, epoch: int) -> int:
        self.model.set_epoch(epoch)  # schedules (scheduled sampling) as the engine sets them
        n = len(self.src)
        perm = torch.randperm(n, generator=self.gen)
        steps = n // self.batch
        for s in range(steps):
            x = self.src.gather(perm[s * self.batch : (s + 1) * self.batch])
            self.opt.zero_grad(set_to_none=True)
            self.model.loss(x).total.mean().backward()
            self.opt.step()
        return steps * self.batch * self.src.row_frames


#: contenders that are a family with options: the SRNN with scheduled sampling at p = 1 (from epoch 1)
VARIANTS = {"srnn-ss": ("srnn", {"ss_start": 0, "ss_end": 1})}


def family_config(name: str, latent: int) -> ModelConfig:
    arch, kw = VARIANTS.get(name, (name, {}))
    return ModelConfig(model=arch, latent=latent, seq_len=50, **kw)


def contenders(families: list[str], prep: Path, latent: int, batch: int) -> dict:
    dev = torch.device("cpu")
    frames = open_frames(prep, "train")
    src = FrameSource.create(frames, dev, 1 << 40)
    val_frames = open_frames(prep, "validation")
    val = FrameSource.create(val_frames, dev, 1 << 40).buffer
    cfgs = [(family_config(fam, latent), batch) for fam in families]
    data = data_for(sequence_indexes(cfgs, prep, (frames, val_frames), 1 << 40), src, val)
    out = {"vae": make_stack(1, ModelConfig(model="vae", latent=latent), src, val, dev, False)}
    for fam in families:
        cfg = family_config(fam, latent)
        seq_src, seq_val = data(cfg)
        st = make_stack(1, cfg, seq_src, seq_val, dev, False)
        st.opts.batch_size = batch
        lr = REGISTRY[cfg.model].TRAIN_DEFAULTS["lr"]  # the family's default, for both contenders
        for v in st.opt.lrs.values():
            v.fill_(lr)
        out[f"{fam} engine"] = st
        out[f"{fam} plain"] = PlainLoop(cfg, seq_src, batch, lr)
    return out


def measure(runs: dict, epochs: int) -> dict[str, float]:
    """Fastest epoch's frames/s per contender (epochs alternate between them)."""
    for r in runs.values():  # warm-up epoch: allocations, first-call costs
        r.run_epoch(0)
    best = {k: 0.0 for k in runs}
    for e in range(epochs):
        for name, r in runs.items():
            t0 = time.perf_counter()
            n = r.run_epoch(e + 1)
            best[name] = max(best[name], n / (time.perf_counter() - t0))
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--families", nargs="+", default=["dkf", "srnn", "rvae"])
    ap.add_argument("--frames", type=int, default=64000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--latent", type=int, default=64)
    ap.add_argument("--batch", type=int, default=128, help="sequences per batch (the VAE: 128 frames)")
    ap.add_argument("--loads", default="idle,busy")
    ap.add_argument("--denormals", action="store_true", help="keep subnormal floats (torch's default)")
    a = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {a.frames} train frames, m={a.latent}")
    with tempfile.TemporaryDirectory() as tmp:
        prep = make_synthetic_prepared(Path(tmp) / "p", a.frames, 4000, 500, speechlike=True, utterances=True)
        for load in a.loads.split(","):
            hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if load == "busy" else None
            try:
                runs = contenders(a.families, prep, a.latent, a.batch)
                torch.set_flush_denormal(not a.denormals)  # after the stacks set it
                res = measure(runs, a.epochs)
            finally:
                if hog is not None:
                    hog.kill()
            base = res["vae"]
            print(f"\n[{load}] frames/s (x the frame-wise VAE; engine / plain loop of the same model)")
            for name, fps in res.items():
                fam = name.split()[0]
                vs_plain = f"  engine/plain x{fps / res[f'{fam} plain']:.2f}" if name.endswith("engine") else ""
                print(f"  {name:14s} {fps:10,.0f}  x{fps / base:.3f}{vs_plain}")


if __name__ == "__main__":
    main()
