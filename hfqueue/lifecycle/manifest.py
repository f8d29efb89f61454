"""The manifest: a job's durable record in its output folder, rebuilt from the Redis record on each state change.

Also where a job ends: the last chunk counted (by a worker, or by ``resume`` finding every part on
disk) decides the final state and writes the manifest once more.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from hfqueue.core.config import Settings
from hfqueue.core.jobs import JobState
from hfqueue.errors import HfqError
from hfqueue.sinks.local import ERRORS, error_files, read_manifest, write_manifest
from hfqueue.sinks.publish import publish
from hfqueue.state.store import JobStore

logger = logging.getLogger(__name__)

_OPEN = (JobState.QUEUED.value, JobState.RUNNING.value, JobState.FINALIZING.value)


def sync_manifest(store: JobStore, job_id: str) -> dict[str, Any]:
    """Write the job's current state, counts and timings from Redis into ``manifest.json``; return it."""
    rec = store.get(job_id)
    status = store.status(job_id)
    out_dir = Path(rec["output_dir"])
    manifest: dict[str, Any] = read_manifest(out_dir) if (out_dir / "manifest.json").exists() else {}
    manifest.update(
        job_id=job_id,
        spec=json.loads(rec["spec"]),
        source=json.loads(rec["source"]),
        chunks=json.loads(rec["chunks"]),
        model_revision=rec.get("model_revision") or None,
        state=status.state.value,
        error=status.error,
        rows_total=status.rows_total,
        rows_done=status.rows_done,
        rows_failed=status.rows_failed,
        rows_truncated=status.rows_truncated,
        resolved=json.loads(rec["resolved"]) if rec.get("resolved") else None,
        chunks_total=status.chunks_total,
        chunks_done=status.chunks_done,
        chunks_failed=status.chunks_failed,
        created_at=status.created_at,
        started_at=status.started_at,
        finished_at=status.finished_at,
        elapsed_seconds=round(status.elapsed, 3),
        rows_per_second=round(status.rows_per_second, 2),
        published=json.loads(rec["published"]) if rec.get("published") else None,
    )
    write_manifest(out_dir, manifest)
    # State changes end here: waiters woken now find the manifest written.
    store.announce(job_id, status.state.value)
    if status.state.is_final and rec.get("batch"):
        from hfqueue.openai_batch.batch import job_ended

        try:
            job_ended(store, rec["batch"])  # the batch's last job to end writes its output files
        except Exception:  # the job's own record is safe; the batch's next status() writes its files
            logger.exception("job %s ended, but writing the output files of its batch %s failed", job_id,
                             rec["batch"])
    return manifest


def finalize(store: JobStore, job_id: str, settings: Settings) -> None:
    """Every chunk is counted: publish the results when the job has an ``output``, then decide the job's final
    state from its counts and write the manifest."""
    status = store.status(job_id)
    if status.rows_failed == 0:
        final, error = JobState.COMPLETED, ""
    elif status.rows_done > 0:
        where = Path(status.output_dir) / ERRORS
        final, error = (JobState.COMPLETED_WITH_ERRORS,
                        f"{status.rows_failed} of {status.rows_total} rows failed; their errors are in {where}")
    else:
        final, error = JobState.FAILED, _first_chunk_error(store, job_id, Path(status.output_dir))
    output = json.loads(store.get(job_id)["spec"]).get("output")
    if output and final != JobState.FAILED and not _published(store, job_id, settings, output):
        return
    if store.transition(job_id, final, time_field="finished_at", error=error):
        sync_manifest(store, job_id)
        logger.info("job %s %s: %d rows, %d failed", job_id, final.value, status.rows_done, status.rows_failed)


def _published(store: JobStore, job_id: str, settings: Settings, output: str) -> bool:
    """Publish the results to ``output`` as the job is ``finalizing``; False when the job must not go on to its
    final state (publishing failed, or it was cancelled meanwhile)."""
    # From finalizing too: a delivery that finds the job stuck there (its publisher died) publishes again.
    if not store.transition(job_id, JobState.FINALIZING, allowed_from=_OPEN):
        return False
    folder = Path(store.get(job_id)["output_dir"])
    sync_manifest(store, job_id)
    try:
        report = publish(folder, settings)
    except Exception as exc:  # noqa: BLE001 - also a chunk's soft time limit, or a bug: never leave it finalizing
        logger.error("job %s: publishing to %s failed: %s", job_id, output, exc, exc_info=not isinstance(exc, HfqError))
        if not isinstance(exc, HfqError):
            exc = HfqError(f"{type(exc).__name__}: {exc}")
        if store.transition(job_id, JobState.FAILED, allowed_from=(JobState.FINALIZING.value,),
                            time_field="finished_at",
                            error=f"every row ran and the results are in {folder}, but publishing them to {output} "
                                  f"failed: {exc}; `hfq resume {job_id}` sends what is missing"):
            sync_manifest(store, job_id)
        return False
    store.set_fields(job_id, published=report)
    return True


def _first_chunk_error(store: JobStore, job_id: str, out_dir: Path) -> str:
    for info in store.chunk_states(job_id).values():
        if info.get("error"):
            return str(info["error"])
    # Every row failed on its own: the first row's error, which usually is every row's.
    for path in error_files(out_dir):
        table = pq.read_table(path, columns=["error"])
        if table.num_rows:
            return f"every row failed; the first: {table.column('error')[0].as_py()}"
    return "every row failed"
