"""Serving the request lane: ``client.infer`` requests and small jobs for the same model share forward passes.

Producers push entries onto the lane (:mod:`hfqueue.state.lane`): an ``infer`` request waits for a
reply; a small job (at most ``HFQ_SMALL_JOB_ROWS`` inline rows) is a job like any other, with a record,
a part and a manifest, whose one chunk travels here instead of through Celery. In each worker's
serving process a thread takes an entry, then keeps taking while more are waiting — up to
``max_batch_size`` rows or ``max_wait_ms``, whichever comes first; it never waits for entries that
are not there (:func:`~hfqueue.worker.batching.gather`) — groups them by everything that decides how
rows run (task, model, load options, options), runs each group as one set of rows through the same
batching path as chunks, and answers each entry with its own rows.

Why not Celery for this path: an entry must not wait behind a chunk that runs for minutes in the
same process, and celery-batches needs a prefetch multiplier at least its batch size, which would
let chunks pile up behind a busy worker (RELIABILITY.md wants prefetch 1). The thread shares the
resident models with the chunk task; a lock makes their forward passes take turns batch by batch.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hfqueue.core.jobs import Chunk, Source
from hfqueue.errors import ModelLoadError
from hfqueue.state import presence, routing
from hfqueue.state.keys import Keys
from hfqueue.state.lane import HEARTBEAT_EVERY, SWEEP_EVERY, Lane
from hfqueue.worker import chunks, guard
from hfqueue.worker.batching import gather
from hfqueue.worker.context import WorkerContext, warm_imports
from hfqueue.worker.models import resolve_device
from hfqueue.worker.outage import Outage
from hfqueue.worker.runner import RowResults

logger = logging.getLogger(__name__)

REPLY_TTL = 60  # seconds a reply waits for a caller that gave up


@dataclass
class Entry:
    """One lane entry: its raw JSON (the key to ack it by) and what it says."""

    raw: str
    body: dict[str, Any]

    @property
    def rows(self) -> int:
        return len(self.body["inputs"])


def start(ctx: WorkerContext) -> Lane:
    """Start the heartbeat and serving threads of this process's end of the lane (daemon threads)."""
    lane = Lane(ctx.store.r, ctx.settings.queue, keep=ctx.settings.job_ttl)
    lane.heartbeat()
    threading.Thread(target=_beat_forever, args=(ctx, lane), name="hfq-heartbeat", daemon=True).start()
    threading.Thread(target=serve_forever, args=(ctx, lane), name="hfq-requests", daemon=True).start()
    return lane


def _beat_forever(ctx: WorkerContext, lane: Lane) -> None:
    # Its own thread: the serving thread may wait minutes for the model lock behind a long batch. Each beat
    # also says what this process holds, for `hfq workers`.
    device, started = resolve_device(ctx.settings.device), time.time()
    outage = Outage(logger, "heartbeat")
    while True:
        try:
            lane.heartbeat()
            info = presence.this_process(ctx.worker, ctx.settings.queue, device, started, ctx.metrics_url,
                                         ctx.models.resident(), ctx.models.devices())
            presence.publish(ctx.store.r, info, keep=ctx.settings.job_ttl)
            routing.announce(ctx.store.r, ctx.settings.queue, ctx.worker, keep=ctx.settings.job_ttl)
            moved = routing.sweep(ctx.store.r, ctx.settings.queue,
                                  redelivery_window=1.2 * ctx.settings.visibility_timeout + 60)
            if moved:
                logger.warning("moved %d chunks queued for workers that stopped onto the shared queues", moved)
            outage.ok()
        except Exception as exc:  # noqa: BLE001 - Redis may be restarting; the next beat retries
            if not outage.failed(exc):
                logger.warning("request lane heartbeat failed", exc_info=True)
        time.sleep(HEARTBEAT_EVERY)


def serve_forever(ctx: WorkerContext, lane: Lane) -> None:
    """Take, gather, run and answer lane entries until the process ends."""
    settings = ctx.settings
    device = resolve_device(settings.device)
    next_sweep = 0.0
    outage = Outage(logger, "request lane")
    while True:
        try:
            if time.monotonic() >= next_sweep:
                lane.sweep()
                next_sweep = time.monotonic() + SWEEP_EVERY
            raw = lane.pop(timeout=1)
            outage.ok()
            if raw is None:
                continue
            first = Entry(raw, json.loads(raw))
            entries = [first]
            if settings.coalesce_requests:
                entries = gather(first, lambda: _entry(lane.take()), lambda e: e.rows,
                                 max_rows=settings.max_batch_size, max_wait_s=settings.max_wait_ms / 1000)
            for group in _groups(entries).values():
                _serve(ctx, lane, device, group)
        except Exception as exc:  # noqa: BLE001 - the serving thread must outlive any one bad entry
            if not outage.failed(exc):
                logger.exception("request lane error")
            time.sleep(0.5)


def _entry(raw: str | None) -> Entry | None:
    return None if raw is None else Entry(raw, json.loads(raw))


def _groups(entries: list[Entry]) -> dict[str, list[Entry]]:
    """Entries that can share a forward pass: the same task, model, load options and options."""
    groups: dict[str, list[Entry]] = defaultdict(list)
    for entry in entries:
        groups[json.dumps(entry.body["spec"], sort_keys=True)].append(entry)
    return groups


def _serve(ctx: WorkerContext, lane: Lane, device: str, group: list[Entry]) -> None:
    """Run one group's rows together and answer each entry; every entry is acked once answered."""
    live = [e for e in group if _admit(ctx, lane, e)]
    if not live:
        return
    for entry in live:
        chunks.waited(ctx, entry.body, "lane")
    rows = [row for e in live for row in e.body["inputs"]]
    warm_imports()
    started = time.perf_counter()
    try:
        spec = chunks.spec_from_wire(live[0].body["spec"])
        loaded, results = ctx.run(spec, rows, device, max_batch_tokens=ctx.settings.request_tokens(device))
    except Exception as exc:  # noqa: BLE001 - the whole group failed: every entry hears why
        for entry in live:
            _fail_entry(ctx, entry, exc)
            lane.ack(entry.raw)
        return
    seconds, start = time.perf_counter() - started, 0
    for entry in live:
        n = entry.rows
        part = RowResults(results.outputs[start:start + n],
                          {i - start: e for i, e in results.errors.items() if start <= i < start + n},
                          {i - start for i in results.truncated if start <= i < start + n})
        info = {"seconds": round(seconds, 4), "batched_with": len(live), "worker": lane.consumer}
        if "job" in entry.body:
            chunks.record_model(ctx, entry.body["job"]["job_id"], spec, loaded)
            _complete_job(ctx, entry, part, info)
        else:
            _reply(ctx, entry, part.outputs, part.errors, info)
        lane.ack(entry.raw)
        start += n


def _admit(ctx: WorkerContext, lane: Lane, entry: Entry) -> bool:
    """Whether an entry still needs running; one that does not is acked here."""
    body = entry.body
    if "job" in body:
        job = body["job"]
        attempt, outcome = None, guard.refuse(ctx, job)
        if outcome is None:
            attempt, outcome = chunks.begin(ctx, job["job_id"], Chunk(**job["chunk"]), Path(job["output_dir"]),
                                            lane.consumer)
        if outcome is not None:
            chunks.observe(ctx, job["spec"], outcome)
        body["attempt"] = attempt
        run = outcome is None
    else:  # an infer request whose caller has given up is not worth running
        run = time.time() < body.get("expires_at", float("inf"))
    if not run:
        lane.ack(entry.raw)
    return run


def _complete_job(ctx: WorkerContext, entry: Entry, results: RowResults, info: dict[str, Any]) -> None:
    job = entry.body["job"]
    outcome = chunks.complete(ctx, job["job_id"], chunks.spec_from_wire(job["spec"]), Source(**job["source"]),
                              Chunk(**job["chunk"]), entry.body["inputs"], results, Path(job["output_dir"]),
                              {**info, "attempt": entry.body.get("attempt")})
    chunks.observe(ctx, job["spec"], outcome)


def _fail_entry(ctx: WorkerContext, entry: Entry, exc: Exception) -> None:
    if "job" not in entry.body:
        errors = {i: (type(exc).__name__, str(exc)) for i in range(entry.rows)}
        _reply(ctx, entry, [None] * entry.rows, errors, {})
        return
    job = entry.body["job"]
    if isinstance(exc, ModelLoadError):
        outcome = chunks.fail_job(ctx, job["job_id"], exc)
    else:
        outcome = chunks.fail(ctx, job["job_id"], Chunk(**job["chunk"]), (type(exc).__name__, str(exc)),
                              Path(job["output_dir"]))
    chunks.observe(ctx, job["spec"], outcome)


def _reply(ctx: WorkerContext, entry: Entry, outputs: list[Any], errors: dict[int, tuple[str, str]],
           info: dict[str, Any]) -> None:
    reply = {"outputs": [_plain(o) for o in outputs], "errors": {str(i): list(e) for i, e in errors.items()}, **info}
    key = Keys.reply(entry.body["id"])
    with ctx.store.r.pipeline() as pipe:
        pipe.rpush(key, json.dumps(reply))
        pipe.expire(key, REPLY_TTL)
        pipe.execute()


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
