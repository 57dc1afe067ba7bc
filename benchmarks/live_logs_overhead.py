"""Benchmark: what the live logs (TensorBoard events, loss.png as a run goes) cost a sweep, per
epoch: the time spent inside the live-logs callback, the members' last figures apart.

    python benchmarks/live_logs_overhead.py PREPARED_DIR MEMBERS EPOCHS TB_EVERY OUT

Figures in docs/benchmarks.md ("Live logs").
"""

import csv
import json
import sys
import time
from collections import defaultdict

import torch

from sdmvae_cli.training.live_logs import LiveLogs, LiveOptions
from sdmvae_cli.training.sweep import run_sweep

torch.set_num_threads(1)

per_epoch, final = defaultdict(float), [0.0]
orig_epoch, orig_done = LiveLogs.epoch, LiveLogs.done


def epoch(self, stack, i, m, rec):
    t, f0 = time.perf_counter(), final[0]
    orig_epoch(self, stack, i, m, rec)
    per_epoch[rec.epoch] += time.perf_counter() - t - (final[0] - f0)


def done(self, m):
    t = time.perf_counter()
    orig_done(self, m)
    final[0] += time.perf_counter() - t


LiveLogs.epoch, LiveLogs.done = epoch, done

prep, members, epochs, tb_every, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
spec = f"{out}.json"
json.dump(
    {
        "common": {"model": "vae", "latent": 64, "epochs": epochs, "patience": 100, "compile": "off"},
        "grid": {"name": "m{seed}", "seed": list(range(members))},
    },
    open(spec, "w"),
)
t = time.perf_counter()
run_sweep(prep, spec, out, device="cpu", overwrite=True, live=LiveOptions(tb_every=tb_every))
wall = time.perf_counter() - t
secs = [float(r["seconds"]) for r in csv.DictReader(open(f"{out}/m0/history.csv"))]
print(
    f"{members} members, {epochs} epochs, --tb-every {tb_every}: wall {wall:.1f} s; epoch (train + validation) {sum(secs) / len(secs):.2f} s"
)
for e in sorted(per_epoch):
    print(f"  epoch {e}: live logs {per_epoch[e]:.3f} s ({per_epoch[e] / secs[e]:.1%} of the epoch)")
print(f"  the members' last figures: {final[0]:.2f} s in all")
