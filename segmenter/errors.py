"""User-facing errors.

Every problem a user can cause (a bad config key, a missing file, a corrupt photo) is raised as a
:class:`SegmenterError` whose message is one line naming the file or key and what is wrong. The
CLI prints that line and exits non-zero; the traceback is shown only with ``-v``.
"""


class SegmenterError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""


class ConfigError(SegmenterError):
    """Invalid configuration: YAML syntax, unknown key, wrong type or out-of-range value."""


class DataError(SegmenterError):
    """Missing, unreadable or inconsistent data (photos, labels, buckets, folders)."""


class RunError(SegmenterError):
    """A run directory that is missing, incomplete, or would be overwritten."""


class Interrupted(SegmenterError):
    """The user pressed Ctrl-C: stopped cleanly, resumable; exit code 130 like a shell."""

    exit_code = 130
