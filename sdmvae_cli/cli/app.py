"""The `sdmvae` command line: parses options and calls library functions (nothing else).

Each command lives in its own module (``cli/<command>.py``) and is registered here with one line.
Every user error is one line on stderr and a non-zero exit code (1; 2 for usage errors,
130 for Ctrl-C): see :func:`run`, the single error path. Ranges and choices are checked by
typer where options are parsed. stdout carries what scripts need (paths one per line, or
JSON with --json), never wrapped by rich; tables and progress for people go to stderr
(``table``, ``models`` and ``demo`` print their table on stdout: it is their result).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import NamedTuple

import typer

from sdmvae_cli.cli.common import Command, Group, set_verbosity
from sdmvae_cli.core.distributed import Launch, launch_from_env, refuse_launch
from sdmvae_cli.core.errors import Interrupted, SdmvaeError, UsageError, check_interrupt, on_sigint, reset_interrupt
from sdmvae_cli.core.threads import MAX_THREADS, apply_thread_policy, parse_threads
from sdmvae_cli.core.version import __version__

app = typer.Typer(
    cls=Group,
    add_completion=True,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Sparse-latent VAEs for speech power spectrograms: prepare, train, resynth, evaluate (SDM-VAE, VSC, ...). "
    "-q/--quiet and -v/--verbose are accepted anywhere on the command line.",
)


def _version(value: bool) -> None:
    if value:
        print(f"sdmvae {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also print informational messages (also after the subcommand)."),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="Only errors on stderr; stdout unchanged (also after the subcommand)."
    ),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    threads: str = typer.Option(
        "auto",
        "--threads",
        metavar="N|auto",
        help="CPU threads per process (also after the subcommand). auto: 1, or OMP_NUM_THREADS when set (README, 'Threads').",
    ),
) -> None:
    pass  # applied by run() before parsing, wherever the flags are (--threads included)


def _register() -> None:
    from sdmvae_cli.cli import demo as cli_demo
    from sdmvae_cli.cli import enhance as cli_enhance
    from sdmvae_cli.cli import evaluate as cli_evaluate
    from sdmvae_cli.cli import info as cli_info
    from sdmvae_cli.cli import mix as cli_mix
    from sdmvae_cli.cli import models as cli_models
    from sdmvae_cli.cli import plot as cli_plot
    from sdmvae_cli.cli import prepare as cli_prepare
    from sdmvae_cli.cli import report as cli_report
    from sdmvae_cli.cli import resynth as cli_resynth
    from sdmvae_cli.cli import sweep as cli_sweep
    from sdmvae_cli.cli import train as cli_train

    for name, fn in (
        ("prepare", cli_prepare.prepare),
        ("models", cli_models.models),
        ("train", cli_train.train),
        ("sweep", cli_sweep.sweep),
        ("sweep-stacks", cli_sweep.sweep_stacks),
        ("resynth", cli_resynth.resynth),
        ("evaluate", cli_evaluate.evaluate),
        ("table", cli_evaluate.table),
        ("demo", cli_demo.demo),
        ("report", cli_report.report),
        ("enhance", cli_enhance.enhance),
        ("export", cli_models.export),
        ("info", cli_info.info),
    ):
        app.command(name, cls=Command)(fn)
    app.command("mix", cls=Command, context_settings={"ignore_unknown_options": True})(cli_mix.mix)  # --snr -5 0 -10
    app.add_typer(cli_plot.plot_app, name="plot", cls=Group)
    for info in cli_plot.plot_app.registered_commands:
        info.cls = Command  # typer's default class, whose help shows a type beside every flag


_register()

GLOBAL_FLAGS = {"-q": "quiet", "--quiet": "quiet", "-v": "verbose", "--verbose": "verbose"}


class GlobalOptions(NamedTuple):
    quiet: bool = False
    verbose: bool = False
    threads: int | None = None  # None: auto (sdmvae_cli.core.threads)


def split_global_flags(argv: list[str]) -> tuple[list[str], GlobalOptions]:
    """-q/--quiet, -v/--verbose and --threads N wherever they are (before a ``--``): removed
    from ``argv`` and returned, so ``sdmvae train ... -q`` works as ``sdmvae -q train ...``.
    A bad --threads value is a :class:`UsageError`."""
    rest, flags, threads = [], set(), None
    it = iter(enumerate(argv))
    for i, a in it:
        if a == "--":
            rest.extend(argv[i:])
            break
        if a == "--threads" or a.startswith("--threads="):
            value = a.partition("=")[2] if "=" in a else next(it, (None, None))[1]
            try:
                threads = parse_threads(value or "")
            except ValueError:
                got = repr(value) if value is not None else "nothing"
                raise UsageError(f"--threads: expected an integer from 1 to {MAX_THREADS} or auto, got {got}") from None
        elif a in GLOBAL_FLAGS:
            flags.add(GLOBAL_FLAGS[a])
        else:
            rest.append(a)
    return rest, GlobalOptions("quiet" in flags, "verbose" in flags, threads)


def _fail(message: str, code: int) -> int:
    """THE error path: one line on stderr, whatever the message holds (newlines folded)."""
    line = " ".join(str(message).split())
    print(line if line.startswith(("error:", "interrupted")) else f"error: {line}", file=sys.stderr)
    return code


def _fail_on_rank(exc: SdmvaeError) -> int:
    """:func:`_fail` in a torchrun launch too: what every rank meets alike (a usage error, an
    interruption, rank 0's refusal sent to all: ``exc.echo`` False) is printed by rank 0 alone;
    another rank's own failure is printed with its rank."""
    launch = _launch()
    if launch is None or launch.is_main:
        return _fail(str(exc), exc.exit_code)
    if not getattr(exc, "echo", True) or isinstance(exc, (UsageError, Interrupted)):
        return exc.exit_code
    return _fail(f"rank {launch.rank}: {exc}", exc.exit_code)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv`` and return the exit status; nothing is printed twice.

    2: usage errors (typer's parse errors, ranges and choices, and :class:`UsageError`);
    1: a failure (:class:`SdmvaeError`, an OS error such as a full disk, an unexpected
    exception: one line; ``SDMVAE_DEBUG=1`` re-raises it for the traceback);
    130: interrupted (Ctrl-C), with what was kept when the command knows it.
    """
    try:
        args, opts = split_global_flags(list(sys.argv[1:] if argv is None else argv))
    except UsageError as exc:
        return _fail(str(exc), exc.exit_code)
    set_verbosity(opts.quiet, opts.verbose)
    command = next((a for a in args if not a.startswith("-")), None)
    known = {c.name for c in app.registered_commands} | {g.name for g in app.registered_groups}
    try:
        if command in known:  # a mistyped command gets typer's "no such command"; --help, --version their own
            refuse_launch(command)
    except UsageError as exc:
        return _fail_on_rank(exc)
    apply_thread_policy(opts.threads)
    reset_interrupt()
    # under torchrun, SIGTERM (torchrun stopping the other ranks, scancel, a SLURM time limit)
    # is a Ctrl-C: every member keeps its last epoch and the sweep records itself interrupted
    signals = (signal.SIGINT, signal.SIGTERM) if _launch() is not None else (signal.SIGINT,)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, on_sigint) for sig in signals}
    try:
        return _run(args)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _launch() -> Launch | None:
    """This process's torchrun launch; None for one process, or where torchrun's variables are
    malformed (refuse_launch says so, once)."""
    try:
        return launch_from_env()
    except UsageError:
        return None


def _run(args: list[str]) -> int:
    try:
        rv = app(args=args, prog_name="sdmvae", standalone_mode=False)
    except SdmvaeError as exc:
        return _fail_on_rank(exc)
    except typer.TyperException as exc:  # click's UsageError family: bad option, value, choice, missing argument
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
            print(ctx.get_help(), file=sys.stderr)
            return 2
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        return _fail(exc.format_message() + hint, getattr(exc, "exit_code", 2))
    except (typer.Abort, KeyboardInterrupt):
        return _fail_on_rank(Interrupted("interrupted"))
    except BrokenPipeError:
        return 1  # stdout closed by the reader (`| head`): nothing to say
    except OSError as exc:
        if os.environ.get("SDMVAE_DEBUG"):
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        return _fail(f"{where}{exc.strerror or exc}", 1)
    except Exception as exc:  # a bug: still one line, with the way to get the traceback
        if os.environ.get("SDMVAE_DEBUG"):
            raise
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        return _fail(
            f"internal error: {type(exc).__name__}{': ' + first if first else ''} (a bug; SDMVAE_DEBUG=1 shows the traceback)", 1
        )
    if rv == 130:  # typer turns KeyboardInterrupt into Exit(130) without a word
        return _fail("interrupted", 130)
    try:
        check_interrupt()  # a Ctrl-C swallowed by a library after the last check: still an interruption
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    return rv if isinstance(rv, int) else 0


def main() -> None:
    """Console entry point (see :func:`run`).

    After an interruption the process ends at once with 130 (``os._exit`` after flushing):
    the normal interpreter shutdown can meet the interruption again (worker pools joined at
    exit, ``python -m``'s runner) and end as "killed by SIGINT" (-2) instead of the promised
    130. Every output is written atomically, so nothing is lost by skipping the shutdown."""
    code = run(sys.argv[1:])
    if code == 130:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(130)
    sys.exit(code)
