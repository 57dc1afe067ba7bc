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
    """An option value out of its range: one line, exit code 2 (as the command-line parser's)."""

    exit_code = 2
