"""THE device resolver: every command's ``--device auto|cpu|cuda[:N]`` becomes a torch device
here, with one spelling check and one error for a GPU that is not there (there were three
resolvers, with three messages)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sdmvae_cli.core.errors import SdmvaeError, UsageError

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def is_device_name(name: str) -> bool:
    """The spellings ``--device`` accepts (checked again where options are parsed)."""
    return name in ("auto", "cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit())


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto``: the GPU when torch sees one, else the CPU. A CUDA device asked for on a
    machine without one is a failure (exit 1), not a silent fall-back to the CPU: a run that
    was meant for the GPU and takes a day on the CPU is worse than a clear line."""
    import torch  # lazily: the CLI checks a --device spelling before torch is loaded (README, "Threads")

    if isinstance(name, torch.device):
        return name
    if not is_device_name(name):
        raise UsageError(f"--device: expected {DEVICE_CHOICES}, got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SdmvaeError("--device cuda asked for, but no CUDA GPU is available (use --device cpu or auto)")
    return torch.device(name)
