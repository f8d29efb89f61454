"""Resuming a job: rebuild it from its output folder when Redis lost it, and re-send what has no part.

The output folder is the durable record: ``manifest.json`` (spec, source, chunk plan), one part per
finished chunk, and, for inline jobs, ``inputs.jsonl``. Resuming counts every chunk finished on disk
(once: the same done-set as workers use) and enqueues only the chunks without a part. On a job Redis
still holds it is safe: a chunk sent again while its first message is still queued is skipped by the
worker that finds its part written, and two copies running at once write the same part.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hfqueue.core.config import Settings
from hfqueue.core.hooks import Hooks
from hfqueue.core.jobs import Chunk, JobSpec, JobState, Source
from hfqueue.errors import HfqError, JobNotFoundError
from hfqueue.lifecycle import jobs as lifecycle
from hfqueue.producer.planner import Plan
from hfqueue.producer.sender import Sender
from hfqueue.sinks.local import INPUTS, MANIFEST, chunk_on_disk, read_inputs, read_manifest, resolve_output_dir

logger = logging.getLogger(__name__)

_RECORD_FIELDS = ("spec", "source", "rows_total", "chunks_total", "chunks", "created_at", "model_revision")


@dataclass
class ResumeReport:
    """What :func:`resume` found and did."""

    job_id: str
    rebuilt: bool  # Redis had lost the job; its record was written again from the output folder
    chunks_total: int
    chunks_on_disk: int  # finished before: their parts are kept and not run again
    chunks_enqueued: int  # sent to the workers again
    state: JobState


def resume(sender: Sender, hooks: Hooks, job_id: str, output_dir: str | None = None) -> ResumeReport:
    """Make sure every chunk of ``job_id`` without a part is on its way to a worker; see the module docs.

    A job that ended ``completed`` or ``completed_with_errors`` is left as it is; one that ended
    ``failed`` or ``cancelled`` runs again from where it stopped, publishing to its ``output`` included.
    """
    store = sender.store
    rebuilt = False
    try:
        record = store.get(job_id)
    except JobNotFoundError:
        folder = find_output_dir(sender.settings, job_id, output_dir)
        rebuilt = store.create(job_id, _record_from(read_manifest(folder), folder), only_if_absent=True)
        record = store.get(job_id)
    folder = Path(record["output_dir"])
    chunks = [Chunk(**c) for c in json.loads(record["chunks"])]
    state = JobState(record["state"])
    if state in (JobState.COMPLETED, JobState.COMPLETED_WITH_ERRORS):
        return ResumeReport(job_id, rebuilt, len(chunks), len(chunks), 0, state)

    missing = []
    for chunk in chunks:
        found = chunk_on_disk(folder, chunk.index, chunk.rows)
        if found is None:
            missing.append(chunk)
        else:
            lifecycle.recount(store, job_id, chunk.index, rows_ok=found.rows_ok, rows_failed=found.rows_failed,
                              rows_truncated=found.rows_truncated, rows_reused=found.rows_reused,
                              failed=found.failed_whole)
    if state in (JobState.FAILED, JobState.CANCELLED):
        # Runs on: the missing chunks, or, with every chunk on disk, the publishing that failed or never ran.
        lifecycle.reopen(store, job_id, state, chunks_left=bool(missing))
    if missing:
        sender.send(_plan(record, folder, job_id, chunks), job_id, only={c.index for c in missing})
        lifecycle.refresh(store, job_id)
    else:
        lifecycle.finalize(store, job_id, sender.settings, hooks)
    report = ResumeReport(job_id, rebuilt, len(chunks), len(chunks) - len(missing), len(missing),
                          store.state(job_id) or state)
    logger.info("resumed job %s%s: %d of %d chunks on disk, %d sent again", job_id,
                " (rebuilt from its folder)" if rebuilt else "", report.chunks_on_disk, len(chunks), len(missing))
    return report


def find_output_dir(settings: Settings, job_id: str, output_dir: str | None) -> Path:
    """The folder holding ``job_id``'s manifest: ``output_dir`` when given, else searched under the output root."""
    root = settings.output_root.expanduser().resolve()
    if output_dir is not None:
        candidates = [resolve_output_dir(settings.output_root, output_dir, job_id)]
    else:
        candidates = [root / job_id, *sorted(p.parent for p in root.glob(f"*/{MANIFEST}"))]
    for folder in candidates:
        try:
            if read_manifest(folder).get("job_id") == job_id:
                return folder
        except (OSError, ValueError):
            continue
    where = candidates[0] if output_dir is not None else f"any folder under {root}"
    raise JobNotFoundError(f"job {job_id!r} is not in Redis and {where} holds no manifest of it; pass the job's "
                           "output_dir, or check HFQ_OUTPUT_ROOT", value=job_id)


def _record_from(manifest: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The Redis record of a job, from its manifest (counts start at zero: resume recounts them from disk)."""
    missing = [f for f in _RECORD_FIELDS if f not in manifest]
    if missing:
        raise HfqError(f"{folder / MANIFEST} lacks {missing}; it was not written by hfqueue, or is damaged",
                       value=str(folder))
    return {**{f: manifest[f] for f in _RECORD_FIELDS}, "output_dir": str(folder)}


def _plan(record: dict[str, str], folder: Path, job_id: str, chunks: list[Chunk]) -> Plan:
    """The job's plan again, with its inline rows read back from the folder."""
    spec, source = json.loads(record["spec"]), Source(**json.loads(record["source"]))
    if source.kind == "inline":
        try:
            spec["inputs"] = read_inputs(folder)
        except OSError as exc:
            raise HfqError(f"cannot resume job {job_id}: its inline inputs are not in {folder / INPUTS} ({exc})",
                           value=job_id) from None
        if len(spec["inputs"]) != int(record["rows_total"]):
            raise HfqError(f"cannot resume job {job_id}: {folder / INPUTS} holds {len(spec['inputs'])} rows, "
                           f"the job has {record['rows_total']}", value=job_id)
    # The stored spec is the one validated at submit, with its defaults filled in: taken as it is.
    return Plan(JobSpec.model_construct(**spec), source, int(record["rows_total"]), chunks, folder)


def recover_open_jobs(sender: Sender, hooks: Hooks, limit: int = 100_000) -> int:
    """Resume every queued or running job Redis holds; return how many.

    For a Redis restored from its append-only file, whose last second of writes may be gone: a chunk whose
    count was lost is counted from its part on disk, a chunk whose message was lost is sent again (a copy of
    one still queued finds its part written by then and is skipped). Finalizing jobs are left to the delivery
    that publishes them.
    """
    resumed = 0
    for job_id in sender.store.job_ids(limit):
        if sender.store.state(job_id) not in (JobState.QUEUED, JobState.RUNNING):
            continue
        try:
            resume(sender, hooks, job_id)
        except HfqError as exc:
            logger.warning("job %s could not be reconciled with its output folder: %s", job_id, exc)
            continue
        resumed += 1
    return resumed
