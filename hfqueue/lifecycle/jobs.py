"""A job's life: the only code that moves a job between states, and that writes its manifest as it moves.

    queued ──start──▶ running ──last chunk counted──▶ (finalizing: publishing to ``output``) ──▶ completed
      │                  │                                                                  completed_with_errors
      └──── cancel / fail (any open state) ──▶ cancelled / failed ◀── publishing failed     failed
    failed / cancelled ──reopen (``resume``)──▶ queued (chunks to run) or running (only publishing left)

Each move is one Lua step in Redis (:meth:`~hfqueue.state.store.JobStore.transition`), so two workers, or a
worker and a user, can never both move the same job. After a move this module rewrites ``manifest.json``,
wakes the job's waiters and, for a final state, tells the hooks (``job_ended``): an OpenAI batch
writes its files when its last job ends (:mod:`hfqueue.openai_batch.hooks`).

Chunks are counted once each (a set of counted indexes), whichever delivery or ``resume`` counts them;
the count of the last chunk finalizes the job.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from hfqueue.core.config import Settings
from hfqueue.core.hooks import Hooks
from hfqueue.core.jobs import JobState
from hfqueue.errors import HfqError
from hfqueue.lifecycle import manifest
from hfqueue.sinks.local import ERRORS, error_files
from hfqueue.sinks.publish import publish
from hfqueue.state.store import JobStore

logger = logging.getLogger(__name__)


def submitted(store: JobStore, job_id: str) -> None:
    """A job's record was just created (queued): write its first manifest."""
    manifest.write(store, job_id)


def refresh(store: JobStore, job_id: str) -> None:
    """The job's counts changed without a move (chunks counted by ``resume``): rewrite its manifest, wake waiters."""
    manifest.write(store, job_id)
    store.notify(job_id, "counts")


def start(store: JobStore, job_id: str) -> None:
    """A worker took the job's first chunk: queued → running (a no-op in any other state)."""
    store.transition(job_id, JobState.RUNNING, allowed_from=(JobState.QUEUED.value,), time_field="started_at")


def fail(store: JobStore, job_id: str, error: str, hooks: Hooks) -> bool:
    """Fail the job as a whole (its model does not load, a path is refused); False when it was over already."""
    return _moved(store, job_id, hooks, store.transition(job_id, JobState.FAILED, time_field="finished_at",
                                                         error=error))


def cancel(store: JobStore, job_id: str, hooks: Hooks, reason: str = "cancelled by user") -> bool:
    """Cancel the job: queued chunks are skipped, a running one stops at its next batch; False if it was over."""
    return _moved(store, job_id, hooks, store.transition(job_id, JobState.CANCELLED, time_field="finished_at",
                                                         error=reason))


def reopen(store: JobStore, job_id: str, was: JobState, *, chunks_left: bool) -> bool:
    """A failed or cancelled job runs on (``resume``): queued when chunks are left to run, else running (only
    its publishing is left)."""
    new = JobState.QUEUED if chunks_left else JobState.RUNNING
    # manifest_state emptied: the manifest still says how the job ended before, until the next move rewrites it
    return store.transition(job_id, new, allowed_from=(was.value,), error="", finished_at="", manifest_state="")


def recount(store: JobStore, job_id: str, index: int, *, rows_ok: int, rows_failed: int, rows_truncated: int,
            failed: bool, rows_reused: int = 0) -> None:
    """Count a chunk found finished on disk (``resume``), once; finalizing is left to the caller."""
    store.chunk_finished(job_id, index, rows_ok=rows_ok, rows_failed=rows_failed, rows_truncated=rows_truncated,
                         rows_reused=rows_reused, info={"state": "done", "resumed": True}, failed=failed)


def count_chunk(store: JobStore, job_id: str, index: int, settings: Settings, hooks: Hooks, *, rows_ok: int,
                info: dict[str, Any], rows_failed: int = 0, rows_truncated: int = 0, rows_reused: int = 0,
                failed: bool = False) -> int:
    """Count a finished chunk once; the last chunk of the job finalizes it. Returns the chunks finished so far,
    -1 when this chunk was counted before (a re-delivery), -2 when the job is gone."""
    finished = store.chunk_finished(job_id, index, rows_ok=rows_ok, rows_failed=rows_failed,
                                    rows_truncated=rows_truncated, rows_reused=rows_reused, info=info, failed=failed)
    if finished >= 0:
        record = store.get(job_id)
        if finished == int(record["chunks_total"]):
            finalize(store, job_id, settings, hooks)
        if record["state"] == JobState.CANCELLED.value:
            manifest.write(store, job_id)  # a chunk that outran the cancel: the manifest counts its rows too
    elif finished == -1 and store.state(job_id) == JobState.FINALIZING:
        # The delivery that counted the last chunk died while publishing (its message was never acknowledged):
        # publish again; the upload resumes where it stopped.
        finalize(store, job_id, settings, hooks)
    return finished


def finalize(store: JobStore, job_id: str, settings: Settings, hooks: Hooks) -> None:
    """Every chunk is counted: publish the results when the job has an ``output``, then decide the job's final
    state from its counts."""
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
    if output and final != JobState.FAILED and not _published(store, job_id, settings, hooks, output):
        return
    if _moved(store, job_id, hooks, store.transition(job_id, final, time_field="finished_at", error=error)):
        logger.info("job %s %s: %d rows, %d failed", job_id, final.value, status.rows_done, status.rows_failed)


def _published(store: JobStore, job_id: str, settings: Settings, hooks: Hooks, output: str) -> bool:
    """Publish the results to ``output`` as the job is ``finalizing``; False when the job must not go on to its
    final state (publishing failed, or it was cancelled meanwhile)."""
    # From finalizing too: a delivery that finds the job stuck there (its publisher died) publishes again.
    if not _moved(store, job_id, hooks, store.transition(job_id, JobState.FINALIZING)):
        return False
    folder = Path(store.get(job_id)["output_dir"])
    try:
        report = publish(folder, settings)
    except Exception as exc:  # noqa: BLE001 - also a chunk's soft time limit, or a bug: never leave it finalizing
        logger.error("job %s: publishing to %s failed: %s", job_id, output, exc, exc_info=not isinstance(exc, HfqError))
        if not isinstance(exc, HfqError):
            exc = HfqError(f"{type(exc).__name__}: {exc}")
        _moved(store, job_id, hooks, store.transition(
            job_id, JobState.FAILED, allowed_from=(JobState.FINALIZING.value,), time_field="finished_at",
            error=f"every row ran and the results are in {folder}, but publishing them to {output} failed: {exc}; "
                  f"`hfq resume {job_id}` sends what is missing"))
        return False
    store.set_fields(job_id, published=report)
    return True


def _moved(store: JobStore, job_id: str, hooks: Hooks, moved: bool) -> bool:
    """After a move: the manifest, then the waiters (who find it written), then, once final, the hooks."""
    if not moved:
        return False
    written = manifest.write(store, job_id)
    store.notify(job_id, written["state"])
    if JobState(written["state"]).is_final:
        hooks.job_ended(job_id, store.get(job_id))
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
