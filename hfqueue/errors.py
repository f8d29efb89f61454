"""The exceptions hfqueue raises: one root, a few children a caller can act on.

Every error says what was wrong and, where there is one, how to fix it. The offending value is kept
on the exception (``value``) so callers and logs can show it without parsing the message.
"""

from __future__ import annotations

from typing import Any


class HfqError(Exception):
    """Root of every error hfqueue raises on purpose.

    >>> try:
    ...     raise InvalidSpecError("chunk_size must be > 0", value=0)
    ... except HfqError as exc:
    ...     exc.value
    0
    """

    def __init__(self, message: str, *, value: Any = None) -> None:
        super().__init__(message)
        self.value = value


class ConfigError(HfqError):
    """A setting, or a combination of settings, is invalid; the message names the HFQ_* variable."""


class InvalidSpecError(HfqError):
    """A job spec cannot run: unknown task, bad option, output outside the output root, ..."""


class SourceNotFoundError(InvalidSpecError):
    """The dataset, split, column, data files or model path named by a spec does not exist."""


class ModelLoadError(HfqError):
    """A worker could not load the model a job asked for."""


class JobNotFoundError(HfqError):
    """No job with this id is known to Redis (it expired, or Redis lost it)."""


class JobFailedError(HfqError):
    """The job ended ``failed``; ``status`` holds the final status with the reason."""

    def __init__(self, message: str, *, value: Any = None, status: Any = None) -> None:
        super().__init__(message, value=value)
        self.status = status


class JobCancelledError(JobFailedError):
    """The job was cancelled before it finished."""


class WaitTimeoutError(HfqError, TimeoutError):
    """``Job.wait(timeout=...)`` ran out of time; the job itself goes on."""


class PublishError(HfqError):
    """A finished job's results could not be sent to its ``output`` (Hub repo or fsspec URL); they stay in its
    output folder, and ``hfq resume`` sends what is missing."""


class BrokerUnavailableError(HfqError):
    """Redis cannot be reached, or the embedded redis-server cannot be started."""
