"""Benchmark: a batch's gather from the prepared frames' memory map against a private copy.

    OMP_NUM_THREADS=1 python benchmarks/memmap_gather.py PREPARED_DIR [BATCHES]

Why: on a CPU, training uses the memory map in place of a copy (data/frames.py), so the
processes of a node share the page cache. Figures in docs/benchmarks.md ("Scaling out").
"""

import sys
import time

import numpy as np
import torch

prep, batches = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 2000
frames = np.load(f"{prep}/train/frames.npy", mmap_mode="c")
mapped, copied = torch.from_numpy(frames), torch.from_numpy(np.array(frames))
idx = torch.randint(0, len(frames), (batches, 128))
for name, x in [("memory map", mapped), ("copy", copied)] * 2:
    t = time.perf_counter()
    for i in range(batches):
        x.index_select(0, idx[i])
    print(f"{name:10s} {(time.perf_counter() - t) / batches * 1e6:6.1f} us per batch of 128 frames")
print(f"the copy holds {copied.numel() * 4 / 2**20:.0f} MiB per process; the map shares the page cache")
