"""The process group of a torchrun launch: who this process is, and the few collectives sdmvae needs.

Why PyTorch's own engine: a launcher or sockets of our own would have to redo what
``torchrun`` (rendezvous, restarts, one process per GPU, multi-node) and ``torch.distributed``
(gloo on CPUs, NCCL on GPUs) already do and clusters already run (SLURM + srun + torchrun).

A launch is recognised by the variables torchrun sets (``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``); without them, or with ``WORLD_SIZE=1``, every command runs as one process and
nothing here is used. Two commands use a group (README, "Scaling out"):

- ``sweep``: the ranks share the sweep's stacks (:mod:`sdmvae_cli.training.distributed_sweep`);
- ``train``: data-parallel, each rank steps on its shard of every batch
  (:mod:`sdmvae_cli.training.data_parallel`).

Every other command refuses a launch of more than one process (:func:`refuse_launch`): run N
times, each would write the same outputs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from sdmvae_cli.core.errors import SdmvaeError, UsageError

if TYPE_CHECKING:
    import torch

T = TypeVar("T")

#: the commands that run under torchrun with more than one process
DISTRIBUTED_COMMANDS = ("train", "sweep")


@dataclass(frozen=True)
class Launch:
    """This process's place in a torchrun launch."""

    rank: int
    world: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes what is written once (sweep.json, a data-parallel run's files)."""
        return self.rank == 0


def launch_from_env(env: dict[str, str] | None = None) -> Launch | None:
    """The launch torchrun describes in the environment; None for a one-process run."""
    env = os.environ if env is None else env
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank, local = int(env.get("RANK", "0")), int(env.get("LOCAL_RANK", "0"))
    except ValueError:
        raise UsageError("WORLD_SIZE, RANK and LOCAL_RANK must be integers (as torchrun sets them)") from None
    if world <= 1:
        return None
    if not 0 <= rank < world:
        raise UsageError(f"RANK {rank} is outside WORLD_SIZE {world}")
    return Launch(rank, world, local)


def is_main_process() -> bool:
    """Whether this process prints a command's results (stdout): a one-process run, or rank 0."""
    launch = launch_from_env()
    return launch is None or launch.is_main


def refuse_launch(command: str | None) -> None:
    """A command other than train or sweep launched as several processes: one line, exit 2."""
    launch = launch_from_env()
    if launch is not None and command not in DISTRIBUTED_COMMANDS:
        what = f"`{command}`" if command else "this command"
        raise UsageError(
            f"{what} runs as one process; only {' and '.join(DISTRIBUTED_COMMANDS)} run under torchrun "
            f"(this launch has {launch.world} processes)"
        )


def rank_device(name: str, launch: Launch) -> str:
    """One GPU per rank: ``auto`` or ``cuda`` becomes ``cuda:LOCAL_RANK`` where torch sees a GPU
    (``auto`` without one: the CPU); an explicit ``cuda:N`` or ``cpu`` is kept."""
    import torch

    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return f"cuda:{launch.local_rank}"
    return name


def init_group(launch: Launch, device: torch.device, timeout_s: float = 1800.0, backend: str | None = None) -> None:
    """Join the process group (env:// rendezvous, set up by torchrun): by default NCCL for GPUs,
    gloo for CPUs; ``timeout_s``: how long a collective may wait for the other ranks."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        import torch

        torch.cuda.set_device(device)
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))


def close_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def peer_stopped(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective failing because another rank stopped (killed, or failed on
    its own): torch raises it as a DistError, or a RuntimeError from its gloo or NCCL layer."""
    import torch.distributed as dist

    text = str(exc)
    return isinstance(exc, dist.DistError) or (
        isinstance(exc, RuntimeError) and any(k in text for k in ("gloo", "NCCL", "Connection closed", "Connection reset"))
    )


def broadcast_object(value: Any, launch: Launch) -> Any:
    """Rank 0's ``value`` on every rank (pickled through the group)."""
    import torch.distributed as dist

    box = [value if launch.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank."""
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def barrier() -> None:
    import torch.distributed as dist

    dist.barrier()


def on_main(fn: Callable[[], T], launch: Launch) -> T:
    """``fn`` on rank 0, its result (or its error) on every rank. Why: the checks of an output
    folder are made once, by the process that then writes it; a refusal must end every rank
    with the same line and status, not leave the others waiting in a collective."""
    outcome: tuple[str, Any] = ("ok", None)
    if launch.is_main:
        try:
            outcome = ("ok", fn())
        except SdmvaeError as exc:  # UsageError included: its type decides the exit status
            outcome = ("error", exc)
        except OSError as exc:  # a full disk, a permission: one line on every rank, not a wait
            outcome = ("error", SdmvaeError(f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc)))
    kind, value = broadcast_object(outcome, launch)
    if kind == "error":
        value.echo = launch.is_main  # the line is printed once, by rank 0 (cli.app._fail)
        raise value
    return value
