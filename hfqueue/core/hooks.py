"""Hooks: what the core tells observers (batches, model loads, chunk outcomes, jobs that ended).

The serving code and the lifecycle call one :class:`Hooks` object and never know who listens. Features
that react plug in as subclasses, chosen by ``hfq`` and the HTTP API (the only places that wire them):
metrics (:class:`~hfqueue.monitoring.metrics.PrometheusHooks`) and OpenAI batches
(:class:`~hfqueue.openai_batch.hooks.BatchHooks`, which writes a batch's files when its last job ends).
:class:`SafeHooks` fans each call out to several hooks and logs one that raises instead of letting it
fail a batch or a state change.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

logger = logging.getLogger(__name__)


class Hooks:
    """The no-op base: override the calls you care about. ``task`` and ``model`` name the job's model."""

    def batch_done(self, task: str, model: str, *, rows: int, real_tokens: int, padded_tokens: int,
                   seconds: float) -> None:
        """One forward pass ran ``rows`` rows of ``real_tokens`` tokens, padded to ``padded_tokens``."""

    def oom_split(self, task: str, model: str) -> None:
        """A batch ran out of device memory and was split."""

    def exact_fallback(self, task: str, model: str) -> None:
        """A reduced-precision batch came out NaN or inf and ran again in float32."""

    def rows_done(self, task: str, model: str, *, ok: int, failed: int, truncated: int = 0) -> None:
        """A set of rows (a chunk, or gathered lane entries) ran: ``ok`` gave outputs, ``failed`` went to errors;
        ``truncated`` of the ``ok`` rows were cut to the model's input limit."""

    def rows_reused(self, task: str, model: str, *, rows: int) -> None:
        """``rows`` rows were copied from the result cache instead of computed."""

    def queue_wait(self, task: str, model: str, *, route: str, seconds: float) -> None:
        """Work waited ``seconds`` between its sending and its start; ``route`` is ``chunk`` or ``lane``."""

    def chunk_done(self, task: str, model: str, *, outcome: str) -> None:
        """A chunk's outcome was written: ``done`` or ``failed`` (every row to the error file)."""

    def job_failed(self, task: str, model: str) -> None:
        """A job failed as a whole (its model does not load or fit, a path is refused)."""

    def model_loaded(self, task: str, model: str, *, seconds: float) -> None:
        """A model was loaded into the cache in ``seconds``."""

    def cache_hit(self, task: str, model: str) -> None:
        """A model was found resident."""

    def model_evicted(self, task: str, model: str) -> None:
        """A model left the cache to make room."""

    def models_resident(self, count: int) -> None:
        """The cache now holds ``count`` models."""

    def job_ended(self, job_id: str, record: Mapping[str, str]) -> None:
        """Job ``job_id`` reached a final state; ``record`` is its Redis record as it ended (state, counts, tags
        such as the OpenAI ``batch`` it belongs to). Called after its manifest is written."""

    def serving_started(self, *, address: str, port: int) -> str | None:
        """A worker's serving process started. A hook that serves something of its own (a metrics endpoint)
        starts it on ``address``:``port`` (port 0: it serves nothing) and returns its URL for ``hfq workers``."""
        return None


class SafeHooks(Hooks):
    """Calls each of ``hooks`` in turn; one that raises is logged and skipped, never fatal."""

    def __init__(self, hooks: Sequence[Hooks] = ()) -> None:
        self.hooks = list(hooks)

    def serving_started(self, *, address: str, port: int) -> str | None:
        """Each hook's ``serving_started``; the first URL one of them returns."""
        urls = []
        for hook in self.hooks:
            try:
                urls.append(hook.serving_started(address=address, port=port))
            except Exception:  # noqa: BLE001 - an observer must never take the work down
                logger.warning("hook %s.serving_started failed", type(hook).__name__, exc_info=True)
        return next((url for url in urls if url), None)


def _fan_out(name: str) -> Callable[..., None]:
    def call(self: SafeHooks, *args: Any, **kwargs: Any) -> None:
        for hook in self.hooks:
            try:
                getattr(hook, name)(*args, **kwargs)
            except Exception:  # noqa: BLE001 - an observer must never take the work down
                logger.warning("hook %s.%s failed", type(hook).__name__, name, exc_info=True)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = getattr(Hooks, name).__doc__
    return call


# Every other call fans out as it is; one that returns something (serving_started) is written out above.
for _name in [n for n, v in vars(Hooks).items() if callable(v) and not n.startswith("_") and n not in vars(SafeHooks)]:
    setattr(SafeHooks, _name, _fan_out(_name))

