"""How many CPU threads a command computes with: one policy.

Why this module exists (issue 23.2, docs/benchmarks.md "Threads"): torch's default is one
intra-op thread per core. On a 2-core machine with one other busy process (a browser,
``evaluate -j 0``) the second thread waits at every parallel region for a core it does not
have, and training ran 2-25x slower than with one thread; on an idle machine the second thread
bought 11-24 % for these small networks (513 -> 128 -> m). A laptop is never idle, so:

- ``--threads auto`` (the default): :data:`AUTO_THREADS` intra-op threads per process, or
  ``OMP_NUM_THREADS`` when the user set it; ``--threads N``: N.

Letting idle OpenMP threads sleep (``OMP_WAIT_POLICY=PASSIVE``, what the spin-waiting theory
suggests) was measured too and does not help: the loss is the thread count, not the spinning.
Worker pools (``prepare -j``, ``evaluate -j``, ``resynth -j``) run one thread per worker
(:func:`single_threaded`): their parallelism is the pool.
"""

from __future__ import annotations

import os
import sys

#: intra-op threads per process under ``--threads auto`` (docs/benchmarks.md, "Threads")
AUTO_THREADS = 1
#: OpenMP/MKL/BLAS variables set before torch or numpy load their thread pools
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


#: the most threads ``--threads`` takes (torch's runtime crashes on absurd counts)
MAX_THREADS = 1024


def parse_threads(value: str) -> int | None:
    """``auto`` -> None, else a thread count in [1, MAX_THREADS]; anything else raises ValueError."""
    if value == "auto":
        return None
    n = int(value)
    if not 1 <= n <= MAX_THREADS:
        raise ValueError(value)
    return n


def resolve_threads(requested: int | None, environ: dict[str, str] | os._Environ = os.environ) -> int:
    """The thread count for ``--threads`` (None: auto). Auto respects a user's OMP_NUM_THREADS."""
    if requested is not None:
        return requested
    try:
        return max(1, int(environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        return AUTO_THREADS


def apply_thread_policy(requested: int | None) -> int:
    """Set the process's thread count for one command; returns the count.

    Before torch is imported (a command line: the CLI imports it lazily) the environment does
    it, so torch's OpenMP runtime starts with the count and ``--help`` pays no torch import;
    after (the Python API, tests) torch is told directly. numpy's BLAS pool is limited either way."""
    from threadpoolctl import threadpool_limits

    n = resolve_threads(requested)
    if "torch" in sys.modules:
        set_threads(n)
    else:
        for var in _THREAD_VARS:
            os.environ[var] = str(n)
        threadpool_limits(n)
    return n


def set_threads(n: int) -> None:
    """torch's intra-op threads and the BLAS/OpenMP pools numpy and scipy use, to ``n``."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    threadpool_limits(n)


def single_threaded() -> None:
    """Process-pool initializer: one thread per worker for torch AND the BLAS/OpenMP pools numpy
    and scipy use (pystoi): without this, workers oversubscribe the cores and -j 2 is no faster
    than -j 1."""
    set_threads(1)
