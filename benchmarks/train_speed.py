"""Training speed: seconds per epoch and frames/s at batch 128 (the paper's setting).

    python benchmarks/train_speed.py --frames 900000 --epochs 4 [--device cuda] [--models sdm,vae,vsc]

Epoch 0 includes the CUDA-graph capture and is reported separately; the figure that counts is
the median of the later epochs. Writes a JSON line per model to stdout (and --json FILE).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from sdmvae_cli.audio.synthetic import make_synthetic_prepared  # noqa: E402
from sdmvae_cli.nets import ModelConfig  # noqa: E402
from sdmvae_cli.training.train import TrainOptions, train  # noqa: E402

CONFIGS = {
    "vae": dict(model="vae"),
    "sdm": dict(model="sdm", dictionary="dct", k=64),
    "sdm-learned": dict(model="sdm", dictionary="learned", k=128, coherence=0.1),
    "vsc": dict(model="vsc", alpha=0.5),
    "threshold": dict(model="threshold", base="laplace"),
    "threshold-learned": dict(model="threshold", learn_threshold=True),
    "laplace": dict(model="laplace"),
    "cauchy": dict(model="cauchy"),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=900_000)
    ap.add_argument("--val-frames", type=int, default=20_000)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--models", default="sdm")
    ap.add_argument("--graph-steps", type=int, default=32)
    ap.add_argument("--no-graph", action="store_true")
    ap.add_argument("--compile", default="auto")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    tmp = Path(tempfile.mkdtemp(prefix="sdmvae-bench-"))
    t = time.perf_counter()
    prep = make_synthetic_prepared(tmp / "prep", a.frames, a.val_frames, speechlike=False)
    print(f"# synthetic data: {time.perf_counter() - t:.1f}s", file=sys.stderr)
    results = []
    for name in a.models.split(","):
        cfg = ModelConfig(**CONFIGS[name])
        opts = TrainOptions(
            epochs=a.epochs,
            patience=10**6,
            device=a.device,
            cuda_graph=not a.no_graph,
            graph_steps=a.graph_steps,
            compile=a.compile,
        )
        r = train(prep, cfg, opts, tmp / f"run-{name}")
        secs = [h["seconds"] for h in r.history]
        later = secs[1:] or secs
        dev = (
            torch.cuda.get_device_name(0)
            if (a.device != "cpu" and torch.cuda.is_available())
            else platform.processor() or platform.machine()
        )
        res = {
            "model": name,
            "frames": a.frames,
            "batch": 128,
            "device": dev,
            "threads": torch.get_num_threads(),
            "cuda_graph": not a.no_graph,
            "compile": a.compile,
            "epoch0_s": round(secs[0], 3),
            "epoch_s_median": round(statistics.median(later), 3),
            "frames_per_s": round(a.frames / statistics.median(later)),
            "torch": torch.__version__,
        }
        print(json.dumps(res), flush=True)
        results.append(res)
    if a.json:
        a.json.write_text("\n".join(json.dumps(r) for r in results) + "\n")


if __name__ == "__main__":
    main()
