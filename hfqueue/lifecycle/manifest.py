"""The manifest: a job's durable record in its output folder, rebuilt from the Redis record after each move.

Only :mod:`hfqueue.lifecycle.jobs` writes it; ``resume`` rebuilds a job Redis lost from it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hfqueue.sinks.local import MANIFEST, read_manifest, write_manifest
from hfqueue.state.store import JobStore


def write(store: JobStore, job_id: str) -> dict[str, Any]:
    """Write the job's current state, counts and timings from Redis into ``manifest.json``; return it."""
    rec = store.get(job_id)
    status = store.status(job_id, rec)  # the same read: the record and its status cannot disagree
    out_dir = Path(rec["output_dir"])
    manifest: dict[str, Any] = read_manifest(out_dir) if (out_dir / MANIFEST).exists() else {}
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
        rows_reused=status.rows_reused,
        resolved=json.loads(rec["resolved"]) if rec.get("resolved") else None,
        dtype=status.dtype,
        exact_batches=status.exact_batches,
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
    # Which state the manifest now holds, for waiters: a job's move shows in Redis before its manifest is rewritten,
    # and Job.wait returns only once the manifest caught up (a caller reads it next).
    store.set_fields(job_id, manifest_state=manifest["state"])
    return manifest
