"""User-facing errors.

Every problem the user can fix (bad audio, a wrong directory, incompatible options) is raised
as :class:`SdmvaeError`; the CLI prints its message as ONE line and exits non-zero, while
Python callers get an ordinary exception they can catch.
"""


class SdmvaeError(Exception):
    """An error caused by the user's input, reported as one line with exit code 1."""

    exit_code = 1


def dataclass_from_dict(cls, d: dict, what: str, ignore_unknown: bool = False):
    """Build the config dataclass ``cls`` from ``d``; an unknown key is a user error (a typo in a
    spec or a config file must not be silently ignored), and so is a value of the wrong type
    (:func:`typed_fields`)."""
    from dataclasses import fields

    if not isinstance(d, dict):
        raise SdmvaeError(f"the {what} options are a {type(d).__name__}, not a table of options")
    names = {f.name for f in fields(cls)}
    unknown = set(d) - names
    if unknown and not ignore_unknown:
        raise SdmvaeError(f"unknown {what} option(s): {', '.join(sorted(unknown))}")
    return cls(**typed_fields(cls, {k: v for k, v in d.items() if k in names}))


def typed_fields(cls, d: dict) -> dict:
    """``d`` checked against the field types the dataclass ``cls`` declares, as JSON and TOML
    give them: an ``int`` field takes an integer (not 2.5, not true), a ``float`` field any finite
    number (returned as a float), ``bool``, ``str``, ``list[int]`` and ``int | None`` what they
    say. Why: a spec or config file bypasses the command line's parsing, and a string where a
    number belongs would otherwise surface as an internal error deep in training."""
    import math
    from dataclasses import fields

    types = {f.name: str(f.type) for f in fields(cls)}

    def is_int(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    out = {}
    for k, v in d.items():
        t = types[k]
        if t == "float" and (is_int(v) or isinstance(v, float)):
            try:
                v = float(v)  # an integer beyond float range overflows here
            except OverflowError:
                v = math.inf
            if not math.isfinite(v):
                raise SdmvaeError(f"option {k!r} must be a finite number, got {d[k]!r}"[:200])
        elif t == "list[int]" and isinstance(v, (list, tuple)) and all(is_int(h) for h in v):
            v = list(v)
        elif not (
            (t == "int" and is_int(v))
            or (t == "int | None" and (v is None or is_int(v)))
            or (t == "bool" and isinstance(v, bool))
            or (t == "str" and isinstance(v, str))
        ):
            want = {
                "float": "a number",
                "list[int]": "a list of integers",
                "int | None": "an integer or null",
                "int": "an integer",
                "bool": "true or false",
                "str": "a string",
            }.get(t, t)
            raise SdmvaeError(f"option {k!r} must be {want}, got {v!r}"[:200])
        out[k] = v
    return out


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


def first_line(exc: BaseException, limit: int = 160) -> str:
    """What a one-line message says of a failure: its first line, at most ``limit`` characters
    (its type where it has no message). Library errors can run to pages (torch's compile errors)."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__
