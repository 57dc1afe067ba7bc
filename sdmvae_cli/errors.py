"""User-facing errors.

Every problem the user can fix (bad audio, a wrong directory, incompatible options) is raised
as :class:`SdmvaeError`; the CLI prints its message as ONE line and exits non-zero, while
Python callers get an ordinary exception they can catch.
"""


class SdmvaeError(Exception):
    """An error caused by the user's input, reported as one line with exit code 1."""

    exit_code = 1


def dataclass_from_dict(cls, d: dict, what: str):
    """Build the config dataclass ``cls`` from ``d``; an unknown key is a user error (a typo in a
    spec or a config file must not be silently ignored)."""
    from dataclasses import fields

    unknown = set(d) - {f.name for f in fields(cls)}
    if unknown:
        raise SdmvaeError(f"unknown {what} option(s): {', '.join(sorted(unknown))}")
    return cls(**d)


class AudioError(SdmvaeError):
    """Audio that cannot be used: missing, corrupt, silent, too short, wrong shape."""


class UsageError(SdmvaeError):
    """Options that cannot work together (found after parsing): exit code 2, like a parse error."""

    exit_code = 2


class Interrupted(SdmvaeError):
    """Ctrl-C (SIGINT) during a run, reported with what was kept: exit code 130 (128 + SIGINT)."""

    exit_code = 130


# -- Ctrl-C that a library swallows -------------------------------------------------------------
#: set by :func:`on_sigint`; some third-party code catches every exception (a bare ``except:``),
#: which can swallow the KeyboardInterrupt of a Ctrl-C; long loops call :func:`check_interrupt`
#: so the interruption still stops the command.
_interrupt_requested = False


def on_sigint(signum, frame) -> None:
    """SIGINT handler installed by the CLI: remember the request, then interrupt as usual."""
    global _interrupt_requested
    _interrupt_requested = True
    raise KeyboardInterrupt


def reset_interrupt() -> None:
    global _interrupt_requested
    _interrupt_requested = False


def check_interrupt() -> None:
    """Raise KeyboardInterrupt if a Ctrl-C came and was swallowed on its way up."""
    if _interrupt_requested:
        raise KeyboardInterrupt
