"""The chunk task: read a chunk's rows, run the model in batches, write the part, count it once.

A chunk may be delivered more than once (late acks on Redis re-deliver after a crash or a visibility
timeout). Its part has a name fixed by its index and is written atomically, and the Redis count of
finished chunks goes through a set of counted indexes, so running a chunk twice changes nothing.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from celery import Celery, Task
from celery.signals import worker_process_init

from hfqueue import sources, tasks
from hfqueue.config import Settings
from hfqueue.errors import HfqError, ModelLoadError
from hfqueue.jobs import Chunk, JobSpec, JobState, Source
from hfqueue.manifest import sync_manifest
from hfqueue.sinks.local import (ERRORS, ROW_INDEX, error_files, error_part_path, error_table, part_path, part_rows,
                                 write_error_part, write_part)
from hfqueue.store import JobStore, redis_client
from hfqueue.worker.batching import TokenBudget
from hfqueue.worker.models import ModelCache, resolve_device
from hfqueue.tasks.base import LoadedModel
from hfqueue.worker.runner import BatchStopped, RowResults, infer_rows
from hfqueue.worker.app import CHUNK_TASK

logger = logging.getLogger(__name__)


@dataclass
class _Context:
    settings: Settings
    store: JobStore
    models: ModelCache
    # (job, model, device) -> token budget, shrunk by out-of-memory errors for the rest of the job.
    budgets: OrderedDict[tuple[str, str, str], TokenBudget] = field(default_factory=OrderedDict)
    # Held around model loads and forward passes: chunks and client.infer requests share the models.
    lock: threading.Lock = field(default_factory=threading.Lock)

    def model(self, adapter: tasks.TaskAdapter, spec: JobSpec, device: str) -> LoadedModel:
        """The spec's model for ``adapter`` from the cache (loaded on a miss), once the worker allows it."""
        if spec.trust_remote_code and not self.settings.allow_remote_code:
            raise ModelLoadError("the job asks for trust_remote_code, which this worker does not allow "
                                 "(the operator can set HFQ_ALLOW_REMOTE_CODE=true)", value=spec.model)
        with self.lock:
            return self.models.get(adapter, str(spec.model), revision=spec.revision, device=device,
                                   dtype=spec.dtype or self.settings.dtype, quantization=spec.quantization,
                                   trust_remote_code=spec.trust_remote_code)

    def budget(self, job_id: str, model: str, device: str) -> TokenBudget:
        """The job's token budget for this model on this device (the newest 64 jobs' are kept)."""
        key = (job_id, model, device)
        if key not in self.budgets:
            self.budgets[key] = TokenBudget(self.settings.batch_tokens(device))
            while len(self.budgets) > 64:
                self.budgets.popitem(last=False)
        return self.budgets[key]


_settings: Settings | None = None
_url: str | None = None
_context: _Context | None = None


def register(app: Celery, settings: Settings, url: str) -> None:
    """Register the chunk task on ``app``; per-process state is created lazily in the serving process."""
    global _settings, _url
    _settings, _url = settings, url
    app.task(name=CHUNK_TASK, bind=True)(run_chunk)
    worker_process_init.connect(_start_request_server, weak=False)


def _start_request_server(**_: Any) -> None:
    # In the serving child, as it starts: a thread that answers client.infer requests (worker/requests.py).
    from hfqueue.worker.requests import serve_forever

    # Nothing slow here: this handler must return within worker_proc_alive_timeout (4 s).
    ctx = _ctx()
    threading.Thread(target=serve_forever, args=(ctx,), name="hfq-requests", daemon=True).start()


def _ctx() -> _Context:
    # Built on first use in the serving (child) process, never in the forking parent.
    global _context
    if _context is None:
        assert _settings is not None and _url is not None, "register() was not called"
        _context = _Context(_settings, JobStore(redis_client(_url, _settings), _settings.job_ttl),
                            ModelCache(_settings.model_cache_size))
    return _context


def run_chunk(self: Task, message: dict[str, Any]) -> dict[str, Any]:
    """Run one chunk of a job and record its outcome. ``message`` is built by the producer's planner."""
    ctx = _ctx()
    job_id, chunk = message["job_id"], Chunk(**message["chunk"])
    state = ctx.store.state(job_id)
    if state is None or state.is_final:
        logger.info("job %s chunk %d skipped: job is %s", job_id, chunk.index, state or "gone from Redis")
        return {"skipped": str(state.value if state else "gone")}
    out_dir = Path(message["output_dir"])
    part = part_path(out_dir, chunk.index)
    if part.exists():  # an earlier delivery wrote it; only the counting may be missing
        errors = error_part_path(out_dir, chunk.index)
        return _finish(ctx, job_id, chunk, rows_ok=part_rows(part), info={"state": "done", "redelivered": True},
                       rows_failed=part_rows(errors) if errors.exists() else 0)

    attempt = ctx.store.chunk_started(job_id, chunk.index, self.request.hostname or "?")
    ctx.store.transition(job_id, JobState.RUNNING, allowed_from=(JobState.QUEUED.value,), time_field="started_at")
    if attempt > ctx.settings.max_attempts:
        return _fail_chunk(ctx, job_id, chunk, ("WorkerLost", f"chunk gave up after {attempt - 1} attempts "
                                                              "(the worker died each time)"), out_dir)
    started = time.perf_counter()
    try:
        # Validated at submit; options are checked again since the wire is not trusted.
        spec = JobSpec.model_construct(**message["spec"])
        spec.options = tasks.get(spec.task).validate_options(spec.options)
        table, errors = _run(ctx, job_id, spec, Source(**message["source"]), chunk, message.get("inputs"))
    except BatchStopped:
        logger.info("job %s chunk %d stopped: job is %s", job_id, chunk.index, ctx.store.state(job_id))
        return {"stopped": chunk.index}
    except ModelLoadError as exc:
        # Every chunk of the job would fail the same way: fail the job now, with the reason.
        logger.error("job %s failed: %s", job_id, exc)
        if ctx.store.transition(job_id, JobState.FAILED, time_field="finished_at", error=str(exc)):
            sync_manifest(ctx.store, job_id)
        return {"failed": str(exc)}
    except Exception as exc:  # noqa: BLE001 - any other error fails this chunk, never the worker
        logger.exception("job %s chunk %d raised", job_id, chunk.index)
        return _fail_chunk(ctx, job_id, chunk, (type(exc).__name__, str(exc)), out_dir)
    seconds = time.perf_counter() - started
    if errors.num_rows:
        write_error_part(out_dir, chunk.index, errors)  # before the result part: see sinks.local
    write_part(out_dir, chunk.index, table)
    info = {"state": "done", "seconds": round(seconds, 3), "attempt": attempt, "worker": self.request.hostname}
    return _finish(ctx, job_id, chunk, rows_ok=table.num_rows, rows_failed=errors.num_rows, info=info)


def _run(ctx: _Context, job_id: str, spec: JobSpec, source: Source, chunk: Chunk,
         inline: list[Any] | None) -> tuple[pa.Table, pa.Table]:
    """The chunk's result table (rows that succeeded) and error table (rows that failed)."""
    settings = ctx.settings
    adapter = tasks.get(spec.task)
    device = resolve_device(settings.device)
    loaded = ctx.model(adapter, spec, device)
    if loaded.revision:
        ctx.store.set_fields(job_id, model_revision=loaded.revision)
    rows = inline if inline is not None else sources.read_rows(source, chunk.start, chunk.end)
    if len(rows) != chunk.rows:
        raise HfqError(f"chunk {chunk.index} expected {chunk.rows} rows, read {len(rows)}")
    results = infer_rows(
        adapter, loaded, rows, spec.options, max_batch_size=settings.max_batch_size,
        max_batch_tokens=ctx.budget(job_id, str(spec.model), device), max_length=settings.max_length,
        should_stop=lambda: ctx.store.state(job_id) != JobState.RUNNING, lock=ctx.lock,
    )
    failed = sorted(results.errors)
    errors = error_table([chunk.start + i for i in failed], [results.errors[i] for i in failed])
    return _result_table(adapter, spec, source, chunk, rows, results), errors


def _result_table(adapter: tasks.TaskAdapter, spec: JobSpec, source: Source, chunk: Chunk, rows: list[Any],
                  results: RowResults) -> pa.Table:
    """``row_idx``, the input columns that are text, and the task's outputs, for the rows that succeeded."""
    keep = [i for i, out in enumerate(results.outputs) if out is not None]
    types = adapter.output_types(spec.options)
    columns: dict[str, Any] = {ROW_INDEX: pa.array([chunk.start + i for i in keep], pa.int64())}
    fields = adapter.fields
    for field, column in source.columns.items():
        values = [rows[i] if len(fields) == 1 else rows[i][field] for i in keep]
        echoed = _echo(values, adapter.echo_inputs)
        if echoed is not None:
            columns[f"input_{column}" if column in types or column == ROW_INDEX else column] = echoed
    for name, arrow_type in types.items():
        columns[name] = pa.array([results.outputs[i][name] for i in keep], arrow_type)  # type: ignore[index]
    return pa.table(columns)


def _echo(values: list[Any], as_json: bool) -> pa.Array | None:
    """An input column to copy into the results: strings as they are, other values (chat messages) as
    JSON when the task allows it, media never."""
    if all(v is None or isinstance(v, str) for v in values):
        return pa.array(values, pa.string())
    if as_json:
        return pa.array([json.dumps(v) for v in values], pa.string())
    return None


def _finish(ctx: _Context, job_id: str, chunk: Chunk, *, rows_ok: int, info: dict[str, Any],
            rows_failed: int = 0, failed: bool = False) -> dict[str, Any]:
    finished = ctx.store.chunk_finished(job_id, chunk.index, rows_ok=rows_ok, rows_failed=rows_failed,
                                        info=info, failed=failed)
    if finished >= 0 and finished == int(ctx.store.get(job_id)["chunks_total"]):
        _finalize(ctx, job_id)
    return {"chunk": chunk.index, "rows": rows_ok, "rows_failed": rows_failed, **info}


def _fail_chunk(ctx: _Context, job_id: str, chunk: Chunk, error: tuple[str, str], out_dir: Path) -> dict[str, Any]:
    reason = f"{error[0]}: {error[1]}"
    logger.error("job %s chunk %d failed: %s", job_id, chunk.index, reason)
    rows = list(range(chunk.start, chunk.end))
    write_error_part(out_dir, chunk.index, error_table(rows, [error] * len(rows)))
    return _finish(ctx, job_id, chunk, rows_ok=0, rows_failed=chunk.rows,
                   info={"state": "failed", "error": reason}, failed=True)


def _finalize(ctx: _Context, job_id: str) -> None:
    """The last chunk to finish decides the job's final state and writes the manifest."""
    status = ctx.store.status(job_id)
    if status.rows_failed == 0:
        final, error = JobState.COMPLETED, ""
    elif status.rows_done > 0:
        where = Path(ctx.store.get(job_id)["output_dir"]) / ERRORS
        final, error = (JobState.COMPLETED_WITH_ERRORS,
                        f"{status.rows_failed} of {status.rows_total} rows failed; their errors are in {where}")
    else:
        final, error = JobState.FAILED, _first_chunk_error(ctx, job_id)
    if ctx.store.transition(job_id, final, time_field="finished_at", error=error):
        sync_manifest(ctx.store, job_id)
        logger.info("job %s %s: %d rows, %d failed", job_id, final.value, status.rows_done, status.rows_failed)


def _first_chunk_error(ctx: _Context, job_id: str) -> str:
    for info in ctx.store.chunk_states(job_id).values():
        if info.get("error"):
            return str(info["error"])
    return _first_row_error(Path(ctx.store.get(job_id)["output_dir"]))


def _first_row_error(out_dir: Path) -> str:
    """Every row failed: the first row's error, which usually is every row's."""
    import pyarrow.parquet as pq

    for path in error_files(out_dir):
        table = pq.read_table(path, columns=["error"])
        if table.num_rows:
            return f"every row failed; the first: {table.column('error')[0].as_py()}"
    return "every row failed"
