"""Process-pool workers for prepare and evaluate."""

from __future__ import annotations

import torch


def single_threaded_worker() -> None:
    """One thread per worker process for torch AND the BLAS/OpenMP pools numpy and scipy use
    (pystoi): without this, workers oversubscribe the cores and -j 2 is no faster than -j 1."""
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(1)
