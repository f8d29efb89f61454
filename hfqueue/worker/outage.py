"""One log line when Redis becomes unreachable and one when it is back, instead of a traceback per retry.

The serving process's threads (request lane, heartbeat) retry every second or two; while Redis restarts,
or stays down after ``hfq down``, logging each failure with its traceback would bury everything else.
"""

from __future__ import annotations

import logging

import redis


class Outage:
    """Tracks whether ``what`` (a thread's work) is waiting for Redis, logging only the changes."""

    def __init__(self, log: logging.Logger, what: str) -> None:
        self.log, self.what, self.down = log, what, False

    def failed(self, exc: BaseException) -> bool:
        """True when ``exc`` says Redis is unreachable (logged once per outage); False for any other error, which
        the caller reports itself."""
        if not isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
            return False
        if not self.down:
            self.down = True
            self.log.warning("%s: Redis is unreachable (%s); retrying quietly until it is back", self.what, exc)
        return True

    def ok(self) -> None:
        """The work went through: an outage, if there was one, is over."""
        if self.down:
            self.down = False
            self.log.warning("%s: Redis is back", self.what)


class QuietRetries(logging.Filter):
    """Celery's consumer logs "Cannot connect to ..." at every retry for as long as Redis is down (after ``hfq
    down``, for hours): let the first of an outage through and drop the repeats until it connects again."""

    RETRY = "consumer: Cannot connect to"
    CONNECTED = "Connected to"

    def __init__(self) -> None:
        super().__init__()
        self.retrying = False

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(self.CONNECTED):
            self.retrying = False
        elif message.startswith(self.RETRY):
            if self.retrying:
                return False
            self.retrying = True
        return True

    def install(self) -> None:
        """Attach to the loggers of Celery's consumer (its retries) and of its connection step (reconnected)."""
        for name in ("celery.worker.consumer.consumer", "celery.worker.consumer.connection"):
            logging.getLogger(name).addFilter(self)
