"""User-facing errors: one line that says what was wrong and what to do.

The CLI prints `str(err)` without a traceback and exits non-zero (`--debug` shows the traceback).
"""


class SelvaError(Exception):
    """Base class of every error selva-rt reports to a user."""

    exit_code = 1


class CheckpointError(SelvaError):
    """A weights file is missing, unreadable, or does not match the network it is loaded into."""


class WeightsMissingError(SelvaError):
    """Weights for a variant are not on disk (and we may not download them)."""


class MediaError(SelvaError):
    """An input clip cannot be used (missing, not a video, too short, ...)."""


class PromptError(SelvaError):
    """A prompt is empty, too long, or not text."""

    exit_code = 2


class OutputError(SelvaError):
    """An output cannot be written (exists without --force, unwritable directory, ...)."""


class UsageError(SelvaError):
    """Bad command-line arguments or API arguments."""

    exit_code = 2


class JobError(SelvaError):
    """A batch or server job is malformed: bad JSON, an unknown field, a bad value."""

    exit_code = 2
