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

from hfqueue.jobs import JobState
from hfqueue.sinks.local import ERRORS, error_files, read_manifest, write_manifest
from hfqueue.store import JobStore

logger = logging.getLogger(__name__)


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
        chunks_total=status.chunks_total,
        chunks_done=status.chunks_done,
        chunks_failed=status.chunks_failed,
        created_at=status.created_at,
        started_at=status.started_at,
        finished_at=status.finished_at,
        elapsed_seconds=round(status.elapsed, 3),
        rows_per_second=round(status.rows_per_second, 2),
    )
    write_manifest(out_dir, manifest)
    # State changes end here: waiters woken now find the manifest written.
    store.announce(job_id, status.state.value)
    return manifest


def finalize(store: JobStore, job_id: str) -> None:
    """Every chunk is counted: decide the job's final state from its counts and write the manifest."""
    status = store.status(job_id)
    if status.rows_failed == 0:
        final, error = JobState.COMPLETED, ""
    elif status.rows_done > 0:
        where = Path(status.output_dir) / ERRORS
        final, error = (JobState.COMPLETED_WITH_ERRORS,
                        f"{status.rows_failed} of {status.rows_total} rows failed; their errors are in {where}")
    else:
        final, error = JobState.FAILED, _first_chunk_error(store, job_id, Path(status.output_dir))
    if store.transition(job_id, final, time_field="finished_at", error=error):
        sync_manifest(store, job_id)
        logger.info("job %s %s: %d rows, %d failed", job_id, final.value, status.rows_done, status.rows_failed)


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
