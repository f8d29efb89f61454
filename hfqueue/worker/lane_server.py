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
from pydantic import ValidationError

from hfqueue.core.messages import ChunkMessage, InferReply, LaneEntry
from hfqueue.errors import ModelLoadError
from hfqueue.state.lane import SWEEP_EVERY, Lane, send_reply
from hfqueue.worker import chunks, guard, reuse
from hfqueue.worker.batching import gather
from hfqueue.worker.context import WorkerContext, warm_imports
from hfqueue.worker.models import resolve_device
from hfqueue.worker.outage import Outage
from hfqueue.worker.runner import RowResults

logger = logging.getLogger(__name__)


@dataclass
class Entry:
    """One lane entry as taken: its raw JSON (the key to ack it by), what it says, and, for a small job, which
    delivery of its chunk this is."""

    raw: str
    body: LaneEntry
    attempt: int | None = None

    @property
    def rows(self) -> int:
        """Number of rows the entry carries."""
        return self.body.rows


def start(ctx: WorkerContext, lane: Lane) -> threading.Thread:
    """Serve ``lane`` from a daemon thread of this process (its heartbeat is :mod:`hfqueue.worker.heartbeat`)."""
    thread = threading.Thread(target=serve_forever, args=(ctx, lane), name="hfq-requests", daemon=True)
    thread.start()
    return thread


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
            first = None if raw is None else _parsed(lane, raw)
            if first is None:
                continue
            entries = [first]
            if settings.coalesce_requests:
                entries = gather(first, lambda: _take(lane), lambda e: e.rows,
                                 max_rows=settings.max_batch_size, max_wait_s=settings.max_wait_ms / 1000)
            for group in _groups(entries).values():
                _serve(ctx, lane, device, group)
        except Exception as exc:  # noqa: BLE001 - the serving thread must outlive any one bad entry
            if not outage.failed(exc):
                logger.exception("request lane error")
            time.sleep(0.5)


def _parsed(lane: Lane, raw: str) -> Entry | None:
    """The entry ``raw`` says, or None for one that does not validate: it cannot name its job or caller reliably,
    so it is logged and dropped (an infer caller times out)."""
    try:
        return Entry(raw, LaneEntry.model_validate_json(raw))
    except ValidationError as exc:
        logger.error("dropped a request-lane entry that does not validate (forged or malformed): %s",
                     guard.invalid(exc))
        lane.ack(raw)
        return None


def _take(lane: Lane) -> Entry | None:
    """The next waiting entry that validates (others are dropped), or None at once when none is waiting."""
    while (raw := lane.take()) is not None:
        entry = _parsed(lane, raw)
        if entry is not None:
            return entry
    return None


def _groups(entries: list[Entry]) -> dict[str, list[Entry]]:
    """Entries that can share a forward pass: the same task, model, load options and options."""
    groups: dict[str, list[Entry]] = defaultdict(list)
    for entry in entries:
        groups[json.dumps(entry.body.spec, sort_keys=True)].append(entry)
    return groups


def _serve(ctx: WorkerContext, lane: Lane, device: str, group: list[Entry]) -> None:
    """Run one group's rows together and answer each entry; every entry is acked once answered."""
    live = [e for e in group if _admit(ctx, lane, e)]
    if not live:
        return
    for entry in live:
        chunks.waited(ctx, entry.body, "lane")
    rows = [row for e in live for row in e.body.inputs]
    warm_imports()
    started = time.perf_counter()
    try:
        spec = chunks.spec_from_wire(live[0].body.spec)
        # Small jobs' rows may come from (and go to) the result cache; client.infer rows always run.
        reusable = [e.body.job is not None for e in live for _ in e.body.inputs]
        fields, results = reuse.run(ctx, spec, rows, device, max_batch_tokens=ctx.settings.request_tokens(device),
                                    reusable=reusable)
    except Exception as exc:  # noqa: BLE001 - the whole group failed: every entry hears why
        for entry in live:
            _fail_entry(ctx, entry, exc)
            lane.ack(entry.raw)
        return
    seconds, start = time.perf_counter() - started, 0
    for entry in live:
        n = entry.rows
        part = results.slice(start, n)
        info = {"seconds": round(seconds, 4), "batched_with": len(live), "worker": lane.consumer}
        if entry.body.job is not None:
            chunks.record_model(ctx, entry.body.job.job_id, fields, part)
            _complete_job(ctx, entry, entry.body.job, part, info)
        else:
            _reply(ctx, entry, part.outputs, part.errors, info)
        lane.ack(entry.raw)
        start += n


def _admit(ctx: WorkerContext, lane: Lane, entry: Entry) -> bool:
    """Whether an entry still needs running; one that does not is acked here."""
    job = entry.body.job
    if job is not None:
        outcome = guard.refuse(ctx, job)
        if outcome is None:
            entry.attempt, outcome = chunks.begin(ctx, job.job_id, job.chunk, Path(job.output_dir), lane.consumer)
        if outcome is not None:
            chunks.observe(ctx, job.spec, outcome)
        run = outcome is None
    else:  # an infer request whose caller has given up is not worth running
        expires_at = entry.body.expires_at
        run = expires_at is None or time.time() < expires_at
    if not run:
        lane.ack(entry.raw)
    return run


def _complete_job(ctx: WorkerContext, entry: Entry, job: ChunkMessage, results: RowResults,
                  info: dict[str, Any]) -> None:
    outcome = chunks.complete(ctx, job.job_id, chunks.spec_from_wire(job.spec), job.source, job.chunk,
                              entry.body.inputs, results, Path(job.output_dir), {**info, "attempt": entry.attempt})
    chunks.observe(ctx, job.spec, outcome)


def _fail_entry(ctx: WorkerContext, entry: Entry, exc: Exception) -> None:
    job = entry.body.job
    if job is None:
        errors = {i: (type(exc).__name__, str(exc)) for i in range(entry.rows)}
        _reply(ctx, entry, [None] * entry.rows, errors, {})
        return
    if isinstance(exc, ModelLoadError):
        outcome = chunks.fail_job(ctx, job.job_id, exc)
    else:
        outcome = chunks.fail(ctx, job.job_id, job.chunk, (type(exc).__name__, str(exc)), Path(job.output_dir))
    chunks.observe(ctx, job.spec, outcome)


def _reply(ctx: WorkerContext, entry: Entry, outputs: list[Any], errors: dict[int, tuple[str, str]],
           info: dict[str, Any]) -> None:
    reply = InferReply(outputs=[_plain(o) for o in outputs], errors=errors, **info)
    send_reply(ctx.redis, entry.body.id, reply)


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
