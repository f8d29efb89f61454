"""An OpenAI batch: a file of requests run as hfqueue jobs, followed in OpenAI's vocabulary.

Valid lines are grouped by (endpoint, model, generation options); each group becomes one ordinary job
(inline rows, so requests for one model share batches like any other work). The batch's record in
Redis names its jobs; every job records its batch, and the last job to end writes the batch's
``output.jsonl`` and ``errors.jsonl`` (:mod:`hfqueue.openai_batch.files`).

Its folder, ``HFQ_OUTPUT_ROOT/<batch id>/``, holds ``requests.jsonl`` (each valid request: its job and
rows), ``invalid.jsonl`` (the rejected lines), one folder per job, and at the end the two output files and
``batch.json``, the final batch object.

States: validating (while the file is read and the jobs are sent), in_progress, finalizing (the output
files are being written), completed; failed when no line is valid; cancelling, cancelled.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from hfqueue.core.jobs import PRIORITIES, JobSpec
from hfqueue.core.paths import check_output_dir
from hfqueue.errors import BrokerUnavailableError, InvalidSpecError, JobNotFoundError
from hfqueue.lifecycle import batches as lifecycle
from hfqueue.lifecycle import jobs as job_lifecycle
from hfqueue.lifecycle.batches import BatchState
from hfqueue.openai_batch import files
from hfqueue.openai_batch.requests import ENDPOINTS, Group, LineError, Request, group_requests, parse_lines
from hfqueue.producer.client import Client
from hfqueue.state.batches import BatchStore

logger = logging.getLogger(__name__)

_TIMES = ("in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at", "cancelled_at")
MAX_LISTED_ERRORS = 100  # the batch object lists this many rejected lines; errors.jsonl has them all


def batch_store(client: Client) -> BatchStore:
    """The OpenAI batch records, over the client's Redis connection."""
    return BatchStore(client.redis, client.settings.job_ttl)


def submit(client: Client, lines: Iterable[str], *, input_file: str, endpoint: str | None = None,
           metadata: dict[str, str] | None = None, priority: str = "normal", completion_window: str = "24h",
           owner: str | None = None) -> str:
    """Validate every line, send one job per group of valid requests, and return the batch id.

    Bad lines never stop the rest: they go to the error file with their line number. Raises
    :class:`InvalidSpecError` for a bad ``endpoint`` or ``metadata`` (nothing is written then).
    ``owner``: the API key name the batch and its jobs belong to (``hfq api``).
    """
    if priority not in PRIORITIES:
        raise InvalidSpecError(f"priority {priority!r} is not one of {list(PRIORITIES)}", value=priority)
    if endpoint is not None and endpoint not in ENDPOINTS:
        raise InvalidSpecError(f"endpoint {endpoint!r} is not one of {sorted(ENDPOINTS)}", value=endpoint)
    _check_metadata(metadata)
    settings, batches = client.settings, batch_store(client)
    batch_id = f"batch_{secrets.token_hex(12)}"
    folder = check_output_dir(settings.output_root, batch_id)
    requests, invalid = parse_lines(lines, endpoint)
    record = {"state": BatchState.VALIDATING.value, "endpoint": endpoint or _endpoint(requests),
              "input_file": input_file,
              "completion_window": completion_window, "metadata": metadata or {}, "output_dir": str(folder),
              "created_at": time.time(), "lines_total": len(requests) + len(invalid), "jobs": [],
              **({"owner": owner} if owner else {})}
    batches.create(batch_id, record)
    tags = {"batch": batch_id, **({"owner": owner} if owner else {})}
    jobs, placed = _send(client, tags, group_requests(requests), invalid, priority)
    files.write_plan(folder, placed, invalid)
    if not jobs:
        files.write_rejected(folder, invalid)
        lifecycle.fail(batches, batch_id, failed_requests=len(invalid), completed_requests=0)
        files.write_batch_object(folder, status(client, batch_id))
        logger.info("OpenAI batch %s failed: none of its %d lines is valid", batch_id, len(invalid))
        return batch_id
    if not lifecycle.sent(batches, batch_id, jobs):
        for job_id in jobs:  # cancelled while its jobs were being sent: cancel them too
            job_lifecycle.cancel(client.store, job_id, client.hooks)
    logger.info("OpenAI batch %s: %d requests in %d jobs, %d lines rejected", batch_id, len(placed), len(jobs),
                len(invalid))
    job_ended(client, batch_id)  # a small job may have ended before the batch listed it
    return batch_id


def _send(client: Client, tags: dict[str, str], groups: list[Group], invalid: list[LineError], priority: str
          ) -> tuple[list[str], list[dict[str, Any]]]:
    """Submit one job per group (split to fit HFQ_MAX_INLINE_ROWS), its record tagged with ``tags`` (batch,
    owner); return the job ids and where each request's rows went. A group whose job is refused (its model
    cannot run) turns into rejected lines."""
    batch_id = tags["batch"]
    jobs: list[str] = []
    placed: list[dict[str, Any]] = []
    try:
        for group in _fitting(groups, client.settings.max_inline_rows):
            job_dir = f"job-{len(jobs):03d}"
            try:
                spec = JobSpec(task=group.task, model=group.model, inputs=group.rows, options=group.options,
                               output_dir=f"{batch_id}/{job_dir}", priority=priority)
                job_id = client.sender.submit(spec, tags)
            except (InvalidSpecError, ValidationError) as exc:
                # A model that cannot run here (missing path, outside the input roots, wrong head), or a request too
                # big for one job (more rows than HFQ_MAX_INLINE_ROWS).
                about_model = getattr(exc, "value", None) == group.model
                invalid += [LineError(line=r.line, custom_id=r.custom_id, param="body.model" if about_model else None,
                                      code="invalid_model" if about_model else "invalid_request",
                                      message=f"line {r.line}: {exc}") for r in group.requests]
                continue
            jobs.append(job_id)
            first = 0
            for req in group.requests:
                placed.append({**req.model_dump(exclude={"rows"}), "job_id": job_id, "job_dir": job_dir,
                               "first_row": first, "n_rows": len(req.rows)})
                first += len(req.rows)
    except BrokerUnavailableError:
        for job_id in jobs:  # nothing half-enqueued runs on
            job_lifecycle.cancel(client.store, job_id, client.hooks)
        lifecycle.fail(batch_store(client), batch_id)
        raise
    invalid.sort(key=lambda e: e.line)
    return jobs, placed


def _fitting(groups: list[Group], max_rows: int) -> Iterable[Group]:
    """Each group, cut between requests into groups of at most ``max_rows`` rows."""
    for group in groups:
        part: list[Request] = []
        rows = 0
        for req in group.requests:
            if part and rows + len(req.rows) > max_rows:
                yield group.model_copy(update={"requests": part})
                part, rows = [], 0
            part.append(req)
            rows += len(req.rows)
        if part:
            yield group.model_copy(update={"requests": part})


def job_ended(client: Client, batch_id: str, plan: files.Plan | None = None) -> None:
    """A job of the batch reached a final state: once all have, write the output files and end the batch.

    Safe to call any number of times from anywhere: one caller wins the claim and writes the files. ``plan``: the
    batch's plan when the caller has read it already (it never changes after submit).
    """
    batches = batch_store(client)
    rec = batches.get(batch_id)
    if not rec or not BatchState(rec["state"]).is_running or not files.has_plan(Path(rec["output_dir"])):
        return  # still validating (or cancelled then): submit calls again once the plan and the jobs are written
    plan = plan or files.read_plan(Path(rec["output_dir"]))  # written before any job can end
    for job_id in plan.by_job:
        state = client.store.state(job_id)
        if state is not None and not state.is_final:
            return
    if not batches.claim(batch_id):
        return
    cancelling = rec["state"] == BatchState.CANCELLING.value
    if not cancelling:
        lifecycle.finalizing(batches, batch_id)
    folder = Path(rec["output_dir"])
    try:
        completed, failed = files.assemble(client.store, folder, plan, cancelled=cancelling)
    except Exception:
        # Left finalizing with the claim given back: the next look at the batch (status, wait) tries again.
        batches.release(batch_id)
        raise
    final = lifecycle.finished(batches, batch_id, cancelled=cancelling, completed=completed, failed=failed)
    files.write_batch_object(folder, status(client, batch_id))
    logger.info("OpenAI batch %s %s: %d requests completed, %d failed", batch_id, final.value, completed, failed)


def cancel(client: Client, batch_id: str) -> dict[str, Any]:
    """Cancel the batch's jobs; the requests that had not run go to the error file. Returns the batch object."""
    rec = _record(client, batch_id)
    if lifecycle.cancel(batch_store(client), batch_id):
        for job_id in json.loads(rec["jobs"]):
            job_lifecycle.cancel(client.store, job_id, client.hooks)  # one that expired is skipped
        job_ended(client, batch_id)
    return status(client, batch_id)


def status(client: Client, batch_id: str, plan: files.Plan | None = None) -> dict[str, Any]:
    """The batch as OpenAI's Batch object. While it runs, ``request_counts.completed`` counts requests whose rows
    have all run (rows that failed included) and ``failed`` the rejected lines; at the end both are exact."""
    rec = _record(client, batch_id)
    state, folder = BatchState(rec["state"]), Path(rec["output_dir"])
    if state.is_final:
        completed, failed = int(rec.get("completed_requests") or 0), int(rec.get("failed_requests") or 0)
    else:
        plan = plan or files.read_plan(folder)
        completed, failed = files.progress(client.store, plan), len(plan.invalid)
    obj: dict[str, Any] = {
        "id": batch_id, "object": "batch", "endpoint": rec["endpoint"],
        "errors": _errors(folder) if rec.get("failed_at") or state.is_final else None,
        "input_file_id": rec["input_file"], "completion_window": rec["completion_window"], "status": state.value,
        "output_file_id": str(folder / files.OUTPUT) if state in (BatchState.COMPLETED, BatchState.CANCELLED) else None,
        "error_file_id": str(folder / files.ERRORS) if state.is_final else None,
        "created_at": int(float(rec["created_at"])), "expires_at": None,
        **{t: int(float(rec[t])) if rec.get(t) else None for t in _TIMES},
        "request_counts": {"total": int(rec["lines_total"]), "completed": completed, "failed": failed},
        "metadata": json.loads(rec.get("metadata") or "{}"),
    }
    return obj


def _record(client: Client, batch_id: str) -> dict[str, str]:
    rec = batch_store(client).get(batch_id)
    if not rec:
        raise JobNotFoundError(f"no OpenAI batch {batch_id!r} in Redis (unknown id, expired, or Redis lost it; a "
                               f"finished batch's object is kept in its folder as batch.json)", value=batch_id)
    return rec


def _errors(folder: Path) -> dict[str, Any] | None:
    """The rejected lines, as the batch object's ``errors`` list (the first MAX_LISTED_ERRORS)."""
    data = [{"code": e.code, "message": e.message, "param": e.param, "line": e.line}
            for e in files.read_invalid(folder)[:MAX_LISTED_ERRORS]]
    return {"object": "list", "data": data} if data else None


def _endpoint(requests: list[Request]) -> str:
    urls = sorted({r.url for r in requests})
    return urls[0] if len(urls) == 1 else ",".join(urls)


def _check_metadata(metadata: dict[str, str] | None) -> None:
    # OpenAI's limits: at most 16 pairs, keys up to 64 characters, values up to 512.
    if metadata is None:
        return
    if len(metadata) > 16 or any(not isinstance(k, str) or not isinstance(v, str) or len(k) > 64 or len(v) > 512
                                 for k, v in metadata.items()):
        raise InvalidSpecError("metadata holds at most 16 string pairs, keys up to 64 characters and values up "
                               "to 512", value=metadata)
