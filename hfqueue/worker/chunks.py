"""A chunk's life on a worker, whichever way it arrived (a Celery chunk task or the request lane).

A chunk may be delivered more than once (late acks on Redis re-deliver after a crash or a visibility
timeout; the lane re-queues what a dead worker held). Its part has a name fixed by its index and is
written atomically, and the Redis count of finished chunks goes through a set of counted indexes, so
running a chunk twice changes nothing.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from hfqueue import tasks
from hfqueue.errors import HfqError
from hfqueue.jobs import Chunk, JobSpec, JobState, Source
from hfqueue.manifest import sync_manifest
from hfqueue.sinks.local import (ERRORS, ROW_INDEX, error_files, error_part_path, error_table, part_path, part_rows,
                                 write_error_part, write_part)
from hfqueue.worker.context import WorkerContext
from hfqueue.worker.runner import RowResults

logger = logging.getLogger(__name__)


def spec_from_wire(raw: dict[str, Any]) -> JobSpec:
    """The job spec a message carries. Validated at submit; options are checked again since the wire is not trusted."""
    spec = JobSpec.model_construct(**raw)
    spec.options = tasks.get(spec.task).validate_options(spec.options)
    return spec


def begin(ctx: WorkerContext, job_id: str, chunk: Chunk, out_dir: Path, worker: str
          ) -> tuple[int, None] | tuple[None, dict[str, Any]]:
    """Decide whether a delivered chunk runs: ``(attempt, None)`` to run it, ``(None, outcome)`` when it must not.

    It must not when the job is over or gone, when an earlier delivery already wrote its part (only
    the counting may be missing), or when it has been started ``max_attempts`` times already.
    """
    state = ctx.store.state(job_id)
    if state is None or state.is_final:
        logger.info("job %s chunk %d skipped: job is %s", job_id, chunk.index, state or "gone from Redis")
        return None, {"skipped": str(state.value if state else "gone")}
    part = part_path(out_dir, chunk.index)
    if part.exists():
        errors = error_part_path(out_dir, chunk.index)
        return None, finish(ctx, job_id, chunk, rows_ok=part_rows(part), info={"state": "done", "redelivered": True},
                            rows_failed=part_rows(errors) if errors.exists() else 0)
    attempt = ctx.store.chunk_started(job_id, chunk.index, worker)
    ctx.store.transition(job_id, JobState.RUNNING, allowed_from=(JobState.QUEUED.value,), time_field="started_at")
    if attempt > ctx.settings.max_attempts:
        return None, fail(ctx, job_id, chunk, ("WorkerLost", f"chunk gave up after {attempt - 1} attempts "
                                                             "(the worker died each time)"), out_dir)
    return attempt, None


def complete(ctx: WorkerContext, job_id: str, spec: JobSpec, source: Source, chunk: Chunk, rows: list[Any],
             results: RowResults, out_dir: Path, info: dict[str, Any]) -> dict[str, Any]:
    """Write the chunk's result part (and error part, when rows failed) and count the chunk as done."""
    failed = sorted(results.errors)
    errors = error_table([chunk.start + i for i in failed], [results.errors[i] for i in failed])
    table = result_table(tasks.get(spec.task), spec, source, chunk, rows, results)
    if errors.num_rows:
        write_error_part(out_dir, chunk.index, errors)  # before the result part: see sinks.local
    write_part(out_dir, chunk.index, table)
    return finish(ctx, job_id, chunk, rows_ok=table.num_rows, rows_failed=errors.num_rows,
                  info={"state": "done", **info})


def result_table(adapter: tasks.TaskAdapter, spec: JobSpec, source: Source, chunk: Chunk, rows: list[Any],
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


def fail_job(ctx: WorkerContext, job_id: str, exc: HfqError) -> dict[str, Any]:
    """Every chunk of the job would fail the same way (the model does not load or fit, a path is refused):
    fail the job now."""
    logger.error("job %s failed: %s", job_id, exc)
    if ctx.store.transition(job_id, JobState.FAILED, time_field="finished_at", error=str(exc)):
        sync_manifest(ctx.store, job_id)
    return {"failed": str(exc)}


def fail(ctx: WorkerContext, job_id: str, chunk: Chunk, error: tuple[str, str], out_dir: Path) -> dict[str, Any]:
    """The whole chunk failed: every row of it goes to the error file with ``error``."""
    reason = f"{error[0]}: {error[1]}"
    logger.error("job %s chunk %d failed: %s", job_id, chunk.index, reason)
    rows = list(range(chunk.start, chunk.end))
    write_error_part(out_dir, chunk.index, error_table(rows, [error] * len(rows)))
    return finish(ctx, job_id, chunk, rows_ok=0, rows_failed=chunk.rows, info={"state": "failed", "error": reason},
                  failed=True)


def finish(ctx: WorkerContext, job_id: str, chunk: Chunk, *, rows_ok: int, info: dict[str, Any],
           rows_failed: int = 0, failed: bool = False) -> dict[str, Any]:
    """Count the chunk once; the last chunk of the job finalizes it."""
    finished = ctx.store.chunk_finished(job_id, chunk.index, rows_ok=rows_ok, rows_failed=rows_failed,
                                        info=info, failed=failed)
    if finished >= 0 and finished == int(ctx.store.get(job_id)["chunks_total"]):
        _finalize(ctx, job_id)
    return {"chunk": chunk.index, "rows": rows_ok, "rows_failed": rows_failed, **info}


def _finalize(ctx: WorkerContext, job_id: str) -> None:
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


def _first_chunk_error(ctx: WorkerContext, job_id: str) -> str:
    for info in ctx.store.chunk_states(job_id).values():
        if info.get("error"):
            return str(info["error"])
    return _first_row_error(Path(ctx.store.get(job_id)["output_dir"]))


def _first_row_error(out_dir: Path) -> str:
    """Every row failed: the first row's error, which usually is every row's."""
    for path in error_files(out_dir):
        table = pq.read_table(path, columns=["error"])
        if table.num_rows:
            return f"every row failed; the first: {table.column('error')[0].as_py()}"
    return "every row failed"
