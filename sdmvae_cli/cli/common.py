"""What every `sdmvae` command module shares: the two consoles, option checks, stdout lines.

The grammar (README, "One CLI grammar"): stdout carries only what a script needs (written
paths one per line, or one JSON document with ``--json``), printed with plain ``print`` so rich
never wraps or colours it; tables, progress bars and messages for people go to stderr.
``-q/--quiet`` silences those (errors excepted), ``-v/--verbose`` adds informational messages;
both are accepted anywhere on the command line (see :func:`sdmvae_cli.cli.app.run`).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, Iterable

import typer
from rich.console import Console
from typer.core import TyperCommand, TyperGroup

from sdmvae_cli.core.device import DEVICE_CHOICES, is_device_name

term = Console()  # stdout, for commands whose table IS the result (table, models, demo)
err = Console(stderr=True, soft_wrap=True)  # everything for people
for _console in (term, err):
    if _console.width < 20:  # COLUMNS=0 (or junk) made rich print nothing at all
        _console.width = 80
log = logging.getLogger("sdmvae")

OVERWRITE_HELP = "Replace an existing output (an input is never overwritten)."
MODEL_HELP = (
    "Checkpoint (a .pt, a run directory) or a released model's name (`sdmvae models --released`); default: the released default."
)
DEVICE_HELP = "auto (GPU when present, the default everywhere), cpu, cuda or cuda:N."
SUBTYPE_HELP = "Sample format of written audio: PCM_16, PCM_24 or FLOAT (default: the format's usual one, 16-bit for WAV/FLAC)."

_quiet = False


def _without_flag_types(params: list[Any]) -> list[Any]:
    """A flag takes no value, so its help row shows no type: newer typer writes ``<bool>`` beside
    every flag (``--overwrite <bool>``, even ``--help <bool>``), which reads as if it took one."""
    for p in params:
        if getattr(p, "is_flag", False) and hasattr(p, "display_type_rich"):
            p.display_type_rich = _no_type  # the hook typer's help reads; older typer shows none anyway
    return params


def _no_type(ctx: Any = None) -> None:
    return None


class Command(TyperCommand):
    """Every `sdmvae` command (registered in cli/app.py with ``cls=Command``)."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _without_flag_types(super().get_params(ctx))


class Group(TyperGroup):
    """The `sdmvae` and `sdmvae plot` groups."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _without_flag_types(super().get_params(ctx))


def set_verbosity(quiet: bool, verbose: bool) -> None:
    """Apply -q/-v for this invocation (an in-process ``run()`` resets it each time)."""
    global _quiet
    _quiet = quiet
    term.quiet = quiet
    err.quiet = quiet
    level = logging.ERROR if quiet else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="warning: %(message)s", handlers=[_StderrHandler()], force=True)


class _StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when a message is logged, not as it was when the first
    in-process ``run()`` configured logging: that stream may be gone by then (a redirected or
    captured stderr), and a warning the library logs later (the tiny-data warning of a training
    run called from Python) must not fail with "I/O operation on closed file"."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def quiet() -> bool:
    return _quiet


def bar(total: int, desc: str, unit: str = "file"):
    """A progress bar on stderr (hidden when not a terminal, or with -q)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=True if _quiet else None, leave=False, file=sys.stderr)


def emit(*paths: Any) -> None:
    """Print what a script needs, one per line on stdout, never through rich."""
    for p in paths:
        print(p, flush=True)


def emit_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str), flush=True)


def folder_meant(p: Path, raw: str | None = None) -> bool:
    """A trailing ``/`` (or an existing directory) means a folder, whatever the name looks like."""
    s = raw if raw is not None else str(p)
    return s.endswith(("/", "\\")) or p.is_dir()


def positive(value):
    """typer callback: a strictly positive, finite number (typer's ``min`` is inclusive)."""
    if value is not None and not 0 < value < float("inf"):
        raise typer.BadParameter(f"must be > 0 and finite, got {value}")
    return value


def unit_open(value: float) -> float:
    if not 0 < value < 1:
        raise typer.BadParameter(f"must be in (0, 1), got {value}")
    return value


def hidden_sizes(value: str) -> str:
    try:
        sizes = [int(h) for h in value.split(",") if h.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if not sizes or min(sizes) < 1:
        raise typer.BadParameter(f"expected positive layer sizes, got {value!r}")
    return value


def arch_name(value: str | None) -> str | None:
    from sdmvae_cli.nets import model_names

    if value is not None and value not in model_names():
        raise typer.BadParameter(f"{value!r} is not a model; expected one of {', '.join(model_names())} (see `sdmvae models`)")
    return value


def device_name(value: str) -> str:
    if not is_device_name(value):
        raise typer.BadParameter(f"expected {DEVICE_CHOICES}, got {value!r}")
    return value


#: training.tensorboard_log.TB_EVERY, repeated here so that `--help` needs no torch (tested equal)
TB_EVERY = 20


def tb_every_option() -> Any:
    """THE ``--tb-every`` option of train and sweep: one default, one range, one help line."""
    return typer.Option(
        TB_EVERY, "--tb-every", min=0, help="Epochs between two TensorBoard examples (spectrogram and audio; 0: none)."
    )


def plot_option(what: str) -> Any:
    """THE ``--plot/--no-plot`` option of train and sweep (``what``: whose loss.png, and when)."""
    return typer.Option(True, "--plot/--no-plot", help=f"Draw {what} (at most 2% of the time) and at its end.")


def tensorboard_option(where: str) -> Any:
    """THE ``--tensorboard/--no-tensorboard`` option of train and sweep (``where``: its help)."""
    return typer.Option(True, "--tensorboard/--no-tensorboard", help=where)


def device_option(where: str = "") -> Any:
    """THE ``--device`` option of every command: one default (auto), one check, one help line."""
    return typer.Option(
        "auto", "--device", callback=device_name, metavar="auto|cpu|cuda[:N]", help=(where + " " if where else "") + DEVICE_HELP
    )


def listed(items: Iterable[Any]) -> str:
    return ", ".join(map(str, items))
