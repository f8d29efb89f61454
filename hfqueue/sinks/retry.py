"""Retrying the calls that publish results: transient failures (rate limits, 5xx, dropped connections) are
tried again with back-off, refusals are not, and giving up raises :class:`PublishError`."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from hfqueue.errors import PublishError

logger = logging.getLogger(__name__)

T = TypeVar("T")
ATTEMPTS = 5
BACKOFF_S = 1.0  # doubled after each failed attempt


def retry(call: Callable[[], T], what: str) -> T:
    """``call()``, tried up to ATTEMPTS times while it fails transiently; :class:`PublishError` once it gives up."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return call()
        except Exception as exc:
            if not _transient(exc) or attempt == ATTEMPTS:
                raise PublishError(f"could not {what} ({short(exc)})"
                                   + (f" after {attempt} attempts" if attempt > 1 else ""), value=what) from exc
            pause = BACKOFF_S * 2 ** (attempt - 1)
            logger.warning("could not %s (%s); trying again in %.0f s", what, short(exc), pause)
            time.sleep(pause)
    raise AssertionError("unreachable")


def _transient(exc: Exception) -> bool:
    """Rate limits, server errors and dropped connections pass; refusals (401, 403, 404, 409, ...) do not."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status is not None:
        return status == 429 or status >= 500
    return isinstance(exc, (ConnectionError, TimeoutError)) or type(exc).__module__.startswith("httpx")


def short(exc: Exception) -> str:
    """The first line of an error: huggingface_hub's messages carry request ids and hints over several lines."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
