"""The Celery side of a worker: the chunk task, and the per-process context built in the serving child.

A chunk task reads its rows, runs the model in batches and hands the outcome to
:mod:`hfqueue.worker.chunks`, which writes the part and counts the chunk once. The serving child also
starts the request lane (:mod:`hfqueue.worker.lane_server`) as threads beside the chunk task.
"""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path
from typing import Any

from celery import Celery, Task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init

from hfqueue import sources
from hfqueue.core.config import Settings
from hfqueue.core.jobs import Chunk, JobState, Source
from hfqueue.errors import HfqError, ModelLoadError
from hfqueue.monitoring.metrics import PrometheusHooks
from hfqueue.state.broker import CHUNK_TASK, redis_client
from hfqueue.state.store import JobStore
from hfqueue.worker import chunks, guard
from hfqueue.worker.context import WorkerContext, warm_imports
from hfqueue.worker.models import ModelCache, resolve_device
from hfqueue.worker.runner import BatchStopped

logger = logging.getLogger(__name__)

_settings: Settings | None = None
_url: str | None = None
_node = "?"
_context: WorkerContext | None = None


def register(app: Celery, settings: Settings, url: str, node: str) -> None:
    """Register the chunk task on ``app``; per-process state is created lazily in the serving process."""
    global _settings, _url, _node
    _settings, _url, _node = settings, url, node
    app.task(name=CHUNK_TASK, bind=True)(run_chunk)
    worker_process_init.connect(_start_serving, weak=False)


def _start_serving(**_: Any) -> None:
    # In the serving child, as it starts: the metrics endpoint, and the threads that answer client.infer
    # requests and small jobs and publish this worker's presence.
    from hfqueue.worker.lane_server import start

    # Nothing slow here: this handler must return within worker_proc_alive_timeout (4 s).
    ctx = context()
    if isinstance(ctx.hooks, PrometheusHooks) and ctx.settings.metrics_port:
        try:
            server = ctx.hooks.serve(ctx.settings.metrics_address, ctx.settings.metrics_port)
            host = socket.gethostname() if ctx.settings.metrics_address in ("0.0.0.0", "::") \
                else ctx.settings.metrics_address
            ctx.metrics_url = f"http://{host}:{server.server_port}/metrics"
        except OSError as exc:  # checked free at start-up; taken since: serve without metrics, loudly
            logger.error("cannot serve metrics on port %d: %s", ctx.settings.metrics_port, exc)
    start(ctx)


def context() -> WorkerContext:
    """This serving process's context, built on first use in the child, never in the forking parent."""
    global _context
    if _context is None:
        assert _settings is not None and _url is not None, "register() was not called"
        hooks = PrometheusHooks(_node, resolve_device(_settings.device))
        _context = WorkerContext(_settings, JobStore(redis_client(_url, _settings), _settings.job_ttl),
                                 ModelCache(_settings.model_cache_size, hooks, device_map=_settings.device_map,
                                            max_memory=_settings.max_memory), hooks=hooks, worker=_node)
    return _context


def run_chunk(self: Task, message: dict[str, Any]) -> dict[str, Any]:
    """Run one chunk of a job and record its outcome. ``message`` is built by the producer's planner.

    The returned summary (rows, rows failed, rows/s, attempt, worker) is what Flower shows as the result.
    """
    ctx = context()
    outcome = _run_chunk(ctx, self.request.hostname or "?", message)
    chunks.observe(ctx, message.get("spec") or {}, outcome)
    return outcome


def _run_chunk(ctx: WorkerContext, hostname: str, message: dict[str, Any]) -> dict[str, Any]:
    refused = guard.refuse(ctx, message)  # before anything is read or written at the message's paths
    if refused is not None:
        return refused
    job_id, chunk, out_dir = message["job_id"], Chunk(**message["chunk"]), Path(message["output_dir"])
    attempt, outcome = chunks.begin(ctx, job_id, chunk, out_dir, hostname)
    if outcome is not None:
        return outcome
    chunks.waited(ctx, message, "chunk")
    warm_imports()
    started = time.perf_counter()
    try:
        spec = chunks.spec_from_wire(message["spec"])
        source = Source(**message["source"])
        rows = message.get("inputs")
        if rows is None:
            rows = sources.read_rows(source, chunk.start, chunk.end)
        if len(rows) != chunk.rows:
            raise HfqError(f"chunk {chunk.index} expected {chunk.rows} rows, read {len(rows)}")
        device = resolve_device(ctx.settings.device)
        loaded, results = ctx.run(spec, rows, device, max_batch_tokens=ctx.budget(job_id, str(spec.model), device),
                                  should_stop=lambda: ctx.store.state(job_id) != JobState.RUNNING)
        chunks.record_model(ctx, job_id, spec, loaded)
    except BatchStopped:
        logger.info("job %s chunk %d stopped: job is %s", job_id, chunk.index, ctx.store.state(job_id))
        return {"stopped": chunk.index}
    except ModelLoadError as exc:
        return chunks.fail_job(ctx, job_id, exc)
    except SoftTimeLimitExceeded:
        limit = ctx.settings.chunk_soft_time_limit
        return chunks.fail(ctx, job_id, chunk, ("SoftTimeLimitExceeded", f"the chunk ran past HFQ_CHUNK_SOFT_TIME_LIMIT "
                                                f"({limit} s); submit smaller chunks (chunk_size) or raise the limit"),
                           out_dir)
    except Exception as exc:  # noqa: BLE001 - any other error fails this chunk, never the worker
        logger.exception("job %s chunk %d raised", job_id, chunk.index)
        return chunks.fail(ctx, job_id, chunk, (type(exc).__name__, str(exc)), out_dir)
    seconds = time.perf_counter() - started
    info = {"seconds": round(seconds, 3), "rows_per_second": round(chunk.rows / seconds, 1) if seconds else None,
            "attempt": attempt, "worker": hostname}
    return chunks.complete(ctx, job_id, spec, source, chunk, rows, results, out_dir, info)
