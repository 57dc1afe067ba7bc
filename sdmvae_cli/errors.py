"""User-facing errors.

Every problem the user can fix (bad audio, a wrong directory, incompatible options) is raised
as :class:`SdmvaeError`; the CLI prints its message as ONE line and exits non-zero, while
Python callers get an ordinary exception they can catch.
"""


class SdmvaeError(Exception):
    """An error caused by the user's input, reported as one line with exit code 1."""

    exit_code = 1


class AudioError(SdmvaeError):
    """Audio that cannot be used: missing, corrupt, silent, too short, wrong shape."""


class UsageError(SdmvaeError):
    """Options that cannot work together (found after parsing): exit code 2, like a parse error."""

    exit_code = 2


class Interrupted(SdmvaeError):
    """Ctrl-C (SIGINT) during a run, reported with what was kept: exit code 130 (128 + SIGINT)."""

    exit_code = 130
