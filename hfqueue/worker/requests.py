"""Low-latency requests (``client.infer``): small requests for the same model share forward passes.

Producers push requests onto a Redis list per queue and block on a reply key. In each worker's
serving process a thread pops a request, then keeps popping while more are waiting — up to
``max_batch_size`` rows or ``max_wait_ms``, whichever comes first; it never waits for requests that
are not there — groups them by model and options, runs each group as one set of rows through the
same batching path as chunks, and pushes each request its own rows' outputs.

Why not Celery for this path: a request must not wait behind a chunk that runs for minutes in the
same process, and celery-batches needs a prefetch multiplier at least its batch size, which would
let chunks pile up behind a busy worker (RELIABILITY.md wants prefetch 1). The thread shares the
resident models with the chunk task; a lock makes their forward passes take turns batch by batch.
Delivery is at most once: a request popped by a worker that then dies gets no reply, and the caller's
``timeout`` says so; calls are cheap to retry.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from typing import Any

import numpy as np

from hfqueue import tasks
from hfqueue.jobs import JobSpec, Keys
from hfqueue.worker.runner import infer_rows

logger = logging.getLogger(__name__)

REPLY_TTL = 60  # seconds a reply waits for a caller that gave up


def serve_forever(ctx: Any) -> None:
    """Pop, gather, run and answer requests until the process ends (run in a daemon thread)."""
    from hfqueue.worker.models import resolve_device

    settings, r = ctx.settings, ctx.store.r
    device = resolve_device(settings.device)
    key = Keys.requests(settings.queue)
    while True:
        try:
            first = r.blpop([key], timeout=1)
            if first is None:
                continue
            requests = [json.loads(first[1])]
            if settings.coalesce_requests:
                requests += _gather(r, key, len(requests[0]["inputs"]), settings)
            for group in _groups(requests).values():
                _answer(ctx, device, group)
        except Exception:  # noqa: BLE001 - the serving thread must outlive any one bad request
            logger.exception("request server error")
            time.sleep(0.5)


def _gather(r: Any, key: str, rows: int, settings: Any) -> list[dict[str, Any]]:
    """More waiting requests, up to max_batch_size rows or max_wait_ms; stops when the list is empty."""
    deadline = time.monotonic() + settings.max_wait_ms / 1000
    more: list[dict[str, Any]] = []
    while rows < settings.max_batch_size and time.monotonic() < deadline:
        raw = r.lpop(key)
        if raw is None:
            break
        more.append(json.loads(raw))
        rows += len(more[-1]["inputs"])
    return more


def _groups(requests: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Requests that can share a forward pass: the same spec but for their inputs (model, load options, options)."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for req in requests:
        groups[json.dumps(req["spec"], sort_keys=True)].append(req)
    return groups


def _answer(ctx: Any, device: str, group: list[dict[str, Any]]) -> None:
    # Validated by the producer; the options are checked again since the wire is not trusted.
    spec, settings = JobSpec.model_construct(**group[0]["spec"]), ctx.settings
    rows = [row for req in group for row in req["inputs"]]
    started = time.perf_counter()
    try:
        adapter = tasks.get(spec.task)
        options = adapter.validate_options(spec.options)
        loaded = ctx.model(adapter, spec, device)
        results = infer_rows(adapter, loaded, rows, options, max_batch_size=settings.max_batch_size,
                             max_batch_tokens=settings.request_tokens(device), max_length=settings.max_length,
                             lock=ctx.lock)
        outputs, errors = results.outputs, results.errors
    except Exception as exc:  # noqa: BLE001 - the whole group failed: every request hears why
        outputs, errors = [None] * len(rows), {i: (type(exc).__name__, str(exc)) for i in range(len(rows))}
    seconds = time.perf_counter() - started
    start = 0
    for req in group:
        n = len(req["inputs"])
        reply = {"outputs": [_plain(o) for o in outputs[start:start + n]],
                 "errors": {str(i - start): list(e) for i, e in errors.items() if start <= i < start + n},
                 "batched_with": len(group), "seconds": round(seconds, 4)}
        pipe = ctx.store.r.pipeline()
        pipe.rpush(Keys.reply(req["id"]), json.dumps(reply))
        pipe.expire(Keys.reply(req["id"]), REPLY_TTL)
        pipe.execute()
        start += n


def _plain(value: Any) -> Any:
    """JSON-ready: numpy arrays and scalars become lists and numbers."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
