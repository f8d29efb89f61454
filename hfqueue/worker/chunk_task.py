"""The Celery side of a worker: the chunk task, and the per-process context built in the serving child.

A chunk task validates its message, reads its rows, runs the model in batches and hands the outcome to
:mod:`hfqueue.worker.chunks`, which writes the part and counts the chunk once. The serving child also
starts its heartbeat (:mod:`hfqueue.worker.heartbeat`) and the request lane (:mod:`hfqueue.worker.lane_server`)
as threads beside the chunk task.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery import Celery, Task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init
from pydantic import ValidationError

from hfqueue import sources
from hfqueue.core.config import Settings
from hfqueue.core.hooks import Hooks
from hfqueue.core.jobs import JobState
from hfqueue.core.messages import ChunkMessage
from hfqueue.errors import HfqError, ModelLoadError
from hfqueue.state.broker import CHUNK_TASK, redis_client
from hfqueue.state.lane import Lane
from hfqueue.state.store import JobStore
from hfqueue.worker import chunks, guard, reuse
from hfqueue.worker.context import WorkerContext, warm_imports
from hfqueue.worker.models import ModelCache, resolve_device
from hfqueue.worker.runner import BatchStopped

logger = logging.getLogger(__name__)

HooksFactory = Callable[[str, str], Hooks]  # (node, device) -> the serving process's hooks

_settings: Settings | None = None
_url: str | None = None
_node = "?"
_hooks: HooksFactory | None = None
_context: WorkerContext | None = None


def register(app: Celery, settings: Settings, url: str, node: str, hooks: HooksFactory | None = None) -> None:
    """Register the chunk task on ``app``; per-process state is created lazily in the serving process.

    ``hooks(node, device)`` builds that process's hooks there (default: none), never in the forking parent.
    """
    global _settings, _url, _node, _hooks
    _settings, _url, _node, _hooks = settings, url, node, hooks
    app.task(name=CHUNK_TASK, bind=True)(run_chunk)
    worker_process_init.connect(_start_serving, weak=False)


def _start_serving(**_: Any) -> None:
    # In the serving child, as it starts: what the hooks serve (metrics), and the threads that keep this
    # worker's presence and answer client.infer requests and small jobs.
    from hfqueue.worker import heartbeat, lane_server

    # Nothing slow here: this handler must return within worker_proc_alive_timeout (4 s).
    ctx = context()
    ctx.metrics_url = ctx.hooks.serving_started(address=ctx.settings.metrics_address, port=ctx.settings.metrics_port)
    lane = Lane(ctx.redis, ctx.settings.queue, keep=ctx.settings.job_ttl)
    heartbeat.start(ctx, lane)
    lane_server.start(ctx, lane)


def context() -> WorkerContext:
    """This serving process's context, built on first use in the child, never in the forking parent."""
    global _context
    if _context is None:
        assert _settings is not None and _url is not None, "register() was not called"
        hooks = _hooks(_node, resolve_device(_settings.device)) if _hooks is not None else Hooks()
        r = redis_client(_url, _settings)
        _context = WorkerContext(_settings, r, JobStore(r, _settings.job_ttl),
                                 ModelCache(_settings.model_cache_size, hooks, device_map=_settings.device_map,
                                            max_memory=_settings.max_memory), hooks=hooks, worker=_node)
    return _context


def run_chunk(self: Task, message: dict[str, Any]) -> dict[str, Any]:
    """Run one chunk of a job and record its outcome. ``message`` is a :class:`ChunkMessage` as JSON, built by the
    producer's planner; one that does not validate is refused (``{"refused": why}``) and touches nothing.

    The returned summary (rows, rows failed, rows/s, attempt, worker) is what Flower shows as the result.
    """
    try:
        chunk_message = ChunkMessage.model_validate(message)
    except ValidationError as exc:
        why = guard.invalid(exc)
        logger.error("refused chunk task %s: its message does not validate (forged or malformed), so no job is "
                     "touched: %s", self.request.id, why)
        return {"refused": why}
    ctx = context()
    outcome = _run_chunk(ctx, self.request.hostname or "?", chunk_message)
    chunks.observe(ctx, chunk_message.spec, outcome)
    return outcome


def _run_chunk(ctx: WorkerContext, hostname: str, message: ChunkMessage) -> dict[str, Any]:
    refused = guard.refuse(ctx, message)  # before anything is read or written at the message's paths
    if refused is not None:
        return refused
    job_id, chunk, out_dir = message.job_id, message.chunk, Path(message.output_dir)
    attempt, outcome = chunks.begin(ctx, job_id, chunk, out_dir, hostname)
    if outcome is not None:
        return outcome
    chunks.waited(ctx, message, "chunk")
    warm_imports()
    started = time.perf_counter()
    try:
        spec, source = chunks.spec_from_wire(message.spec), message.source
        rows = message.inputs
        if rows is None:
            rows = sources.read_rows(source, chunk.start, chunk.end)
        if len(rows) != chunk.rows:
            raise HfqError(f"chunk {chunk.index} expected {chunk.rows} rows, read {len(rows)}")
        device = resolve_device(ctx.settings.device)
        fields, results = reuse.run(ctx, spec, rows, device,
                                    max_batch_tokens=ctx.budget(job_id, str(spec.model), device),
                                    should_stop=lambda: ctx.store.state(job_id) != JobState.RUNNING)
        chunks.record_model(ctx, job_id, fields, results)
    except BatchStopped:
        logger.info("job %s chunk %d stopped: job is %s", job_id, chunk.index, ctx.store.state(job_id))
        return {"stopped": chunk.index}
    except ModelLoadError as exc:
        return chunks.fail_job(ctx, job_id, exc)
    except SoftTimeLimitExceeded:
        why = (f"the chunk ran past HFQ_CHUNK_SOFT_TIME_LIMIT ({ctx.settings.chunk_soft_time_limit} s); submit "
               "smaller chunks (chunk_size) or raise the limit")
        return chunks.fail(ctx, job_id, chunk, ("SoftTimeLimitExceeded", why), out_dir)
    except Exception as exc:  # noqa: BLE001 - any other error fails this chunk, never the worker
        logger.exception("job %s chunk %d raised", job_id, chunk.index)
        return chunks.fail(ctx, job_id, chunk, (type(exc).__name__, str(exc)), out_dir)
    seconds = time.perf_counter() - started
    info = {"seconds": round(seconds, 3), "rows_per_second": round(chunk.rows / seconds, 1) if seconds else None,
            "attempt": attempt, "worker": hostname}
    return chunks.complete(ctx, job_id, spec, source, chunk, rows, results, out_dir, info)
