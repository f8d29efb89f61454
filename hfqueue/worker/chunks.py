"""A chunk's life on a worker, whichever way it arrived (a Celery chunk task or the request lane).

A chunk may be delivered more than once (late acks on Redis re-deliver after a crash or a visibility
timeout; the lane re-queues what a dead worker held). Its part has a name fixed by its index and is
written atomically, and the Redis count of finished chunks goes through a set of counted indexes, so
running a chunk twice changes nothing.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa

from hfqueue import tasks
from hfqueue.core.jobs import Chunk, JobSpec, Source
from hfqueue.core.messages import ChunkMessage, LaneEntry
from hfqueue.errors import HfqError
from hfqueue.lifecycle import jobs as lifecycle
from hfqueue.sinks.local import ROW_INDEX, chunk_on_disk, error_table, write_error_part, write_part
from hfqueue.tasks.base import LoadedModel
from hfqueue.tasks.engines.attach import engine_of
from hfqueue.worker.context import WorkerContext
from hfqueue.worker.runner import RowResults

logger = logging.getLogger(__name__)

CLAIM_TTL = 30  # seconds: writing a part and counting it takes far less


def spec_from_wire(raw: dict[str, Any]) -> JobSpec:
    """The job spec a message carries. Validated at submit; options are checked again since the wire is not trusted."""
    spec = JobSpec.model_construct(**raw)
    spec.options = tasks.get(spec.task).validate_options(spec.options)
    return spec


def begin(ctx: WorkerContext, job_id: str, chunk: Chunk, out_dir: Path, worker: str
          ) -> tuple[int, None] | tuple[None, dict[str, Any]]:
    """Decide whether a delivered chunk runs: ``(attempt, None)`` to run it, ``(None, outcome)`` when it must not.

    It must not when the job is over or gone, when an earlier delivery already finished it on disk (only
    the counting may be missing), or when it has been started ``max_attempts`` times already.
    """
    state = ctx.store.state(job_id)
    if state is None or state.is_final:
        logger.info("job %s chunk %d skipped: job is %s", job_id, chunk.index, state or "gone from Redis")
        return None, {"skipped": str(state.value if state else "gone")}
    on_disk = chunk_on_disk(out_dir, chunk.index, chunk.rows)
    if on_disk is not None:
        return None, finish(ctx, job_id, chunk, rows_ok=on_disk.rows_ok, rows_failed=on_disk.rows_failed,
                            rows_truncated=on_disk.rows_truncated, rows_reused=on_disk.rows_reused, info={"state": "done", "redelivered": True},
                            failed=on_disk.failed_whole)
    attempt = ctx.store.chunk_started(job_id, chunk.index, worker)
    lifecycle.start(ctx.store, job_id)
    if attempt > ctx.settings.max_attempts:
        return None, fail(ctx, job_id, chunk, ("WorkerLost", f"chunk gave up after {attempt - 1} attempts: each "
                                                             "ended with its process killed (a crash, the system's "
                                                             "out-of-memory killer, or HFQ_CHUNK_TIME_LIMIT)"), out_dir)
    return attempt, None


def complete(ctx: WorkerContext, job_id: str, spec: JobSpec, source: Source, chunk: Chunk, rows: list[Any],
             results: RowResults, out_dir: Path, info: dict[str, Any]) -> dict[str, Any]:
    """Write the chunk's result part (and error part, when rows failed) and count the chunk as done."""
    failed = sorted(results.errors)
    errors = error_table([chunk.start + i for i in failed], [results.errors[i] for i in failed])
    table = result_table(tasks.get(spec.task), spec, source, chunk, rows, results)
    with _claimed(ctx, job_id, chunk) as won:
        if not won:
            return {"chunk": chunk.index, "skipped": "another delivery finished it first"}
        if errors.num_rows:
            write_error_part(out_dir, chunk.index, errors)  # before the result part: see sinks.local
        reused = len(results.reused_at)
    write_part(out_dir, chunk.index, table, rows_truncated=results.rows_truncated, rows_reused=reused)
    return finish(ctx, job_id, chunk, rows_ok=table.num_rows, rows_failed=errors.num_rows,
                  rows_truncated=results.rows_truncated, rows_reused=reused,
                  info={"state": "done", **info, **({"rows_reused": reused} if reused else {})})


def model_fields(ctx: WorkerContext, spec: JobSpec, loaded: LoadedModel) -> dict[str, Any]:
    """What the job's model resolved to, as job fields: the revision it loaded, the precision and engine it ran on,
    and what the task took from the model (pooling, normalization, prompt, input limit, ...)."""
    resolved = tasks.get(spec.task).resolved(loaded, spec.options, ctx.settings.max_length)
    engine = getattr(engine_of(loaded), "engine", "torch")
    return {"resolved": {**resolved, "truncate": spec.truncate, "dtype": loaded.dtype, "engine": engine},
            "dtype": loaded.dtype, **({"model_revision": loaded.revision} if loaded.revision else {})}


def record_model(ctx: WorkerContext, job_id: str, fields: dict[str, Any] | None, results: RowResults) -> None:
    """Record in the job what its model resolved to (:func:`model_fields`; None when no model ran and the result
    cache knew nothing) and the batches that ran again in float32, for the manifest and the status."""
    if fields:
        ctx.store.set_fields(job_id, **fields)
    if results.exact_batches:
        ctx.store.add(job_id, "exact_batches", results.exact_batches)


def output_table(task: tasks.Task, options: dict[str, Any], outputs: list[dict[str, Any]]) -> pa.Table:
    """The task's output columns for ``outputs`` (one dict per row), typed as every part of the job is."""
    return pa.table({name: pa.array([out[name] for out in outputs], arrow_type)
                     for name, arrow_type in task.output_types(options).items()})


def result_table(task: tasks.Task, spec: JobSpec, source: Source, chunk: Chunk, rows: list[Any],
                 results: RowResults) -> pa.Table:
    """``row_idx``, the input columns that are text, and the task's outputs, for the rows that succeeded (computed,
    or copied from the result cache), in row order."""
    computed = [i for i, out in enumerate(results.outputs) if out is not None]
    outputs = output_table(task, spec.options, [results.outputs[i] for i in computed])  # type: ignore[misc]
    order = computed
    if results.reused_at:
        outputs = pa.concat_tables([outputs, results.reused.select(outputs.column_names).cast(outputs.schema)])
        order = computed + results.reused_at
    keep = sorted(order)
    if order != keep:
        outputs = outputs.take(pa.array(sorted(range(len(order)), key=order.__getitem__), pa.int64()))
    types = task.output_types(spec.options)
    columns: dict[str, Any] = {ROW_INDEX: pa.array([chunk.start + i for i in keep], pa.int64())}
    for field, column in source.columns.items():
        values = [_field(rows[i], field, task.fields[0]) for i in keep]
        echoed = _echo(values, task.echo_inputs)
        if echoed is not None:
            columns[f"input_{column}" if column in types or column == ROW_INDEX else column] = echoed
    for name in types:
        columns[name] = outputs.column(name)
    return pa.table(columns)


def _field(row: Any, field: str, first: str) -> Any:
    """A row's value of ``field``: from a ``{field: value}`` row, else the row itself for the task's first field
    (a string, chat messages, an undecoded image) and None for an optional one it does not hold (a text_pair)."""
    if isinstance(row, dict) and field in row:
        return row[field]
    return row if field == first else None


def _echo(values: list[Any], as_json: bool) -> pa.Array | None:
    """An input column to copy into the results: strings as they are, other values (chat messages) as
    JSON when the task allows it, media never."""
    if all(v is None or isinstance(v, str) for v in values):
        return pa.array(values, pa.string())
    if as_json:
        return pa.array([json.dumps(v) for v in values], pa.string())
    return None


def waited(ctx: WorkerContext, message: ChunkMessage | LaneEntry, route: str) -> None:
    """Tell the hooks how long a chunk message or lane entry waited between its sending and now."""
    ctx.hooks.queue_wait(str(message.spec.get("task")), str(message.spec.get("model")), route=route,
                         seconds=time.time() - message.sent_at)


def observe(ctx: WorkerContext, spec: dict[str, Any], outcome: dict[str, Any]) -> None:
    """Tell the hooks what became of a chunk, from the outcome this module returned for it."""
    task, model = str(spec.get("task")), str(spec.get("model"))
    if outcome.get("state") in ("done", "failed") and not outcome.get("redelivered"):
        ctx.hooks.chunk_done(task, model, outcome=outcome["state"])
    elif "failed" in outcome:  # the job failed as a whole (fail_job)
        ctx.hooks.job_failed(task, model)


def fail_job(ctx: WorkerContext, job_id: str, exc: HfqError) -> dict[str, Any]:
    """Every chunk of the job would fail the same way (the model does not load or fit, a path is refused):
    fail the job now."""
    logger.error("job %s failed: %s", job_id, exc)
    lifecycle.fail(ctx.store, job_id, str(exc), ctx.hooks)
    return {"failed": str(exc)}


def fail(ctx: WorkerContext, job_id: str, chunk: Chunk, error: tuple[str, str], out_dir: Path) -> dict[str, Any]:
    """The whole chunk failed: every row of it goes to the error file with ``error``."""
    reason = f"{error[0]}: {error[1]}"
    logger.error("job %s chunk %d failed: %s", job_id, chunk.index, reason)
    rows = list(range(chunk.start, chunk.end))
    with _claimed(ctx, job_id, chunk) as won:
        if not won:
            return {"chunk": chunk.index, "skipped": "another delivery finished it first"}
        write_error_part(out_dir, chunk.index, error_table(rows, [error] * len(rows)))
    return finish(ctx, job_id, chunk, rows_ok=0, rows_failed=chunk.rows, info={"state": "failed", "error": reason},
                  failed=True)


@contextmanager
def _claimed(ctx: WorkerContext, job_id: str, chunk: Chunk) -> Iterator[bool]:
    """Whether this delivery won the right to write the chunk's outcome; a failed write gives it back."""
    token = uuid.uuid4().hex
    won = ctx.store.claim(job_id, chunk.index, token, ttl=CLAIM_TTL)
    # The winner writes and counts within seconds; should it die first, its claim expires and we take over.
    while not won and not ctx.store.is_counted(job_id, chunk.index):
        time.sleep(0.5)
        won = ctx.store.claim(job_id, chunk.index, token, ttl=CLAIM_TTL)
    if not won:
        logger.info("job %s chunk %d: another delivery wrote its outcome first; this one writes nothing",
                    job_id, chunk.index)
    try:
        yield won
    except BaseException:
        if won:
            ctx.store.release(job_id, chunk.index)
        raise


def finish(ctx: WorkerContext, job_id: str, chunk: Chunk, *, rows_ok: int, info: dict[str, Any],
           rows_failed: int = 0, rows_truncated: int = 0, rows_reused: int = 0, failed: bool = False) -> dict[str, Any]:
    """Count the chunk once (the last chunk of the job finalizes it); the chunk's outcome."""
    lifecycle.count_chunk(ctx.store, job_id, chunk.index, ctx.settings, ctx.hooks, rows_ok=rows_ok,
                          rows_failed=rows_failed, rows_truncated=rows_truncated, rows_reused=rows_reused, info=info,
                          failed=failed)
    return {"chunk": chunk.index, "rows": rows_ok, "rows_failed": rows_failed, **info}
