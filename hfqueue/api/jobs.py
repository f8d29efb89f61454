"""``/v1/jobs``: submit a :class:`~hfqueue.JobSpec`, follow, list, cancel and resume jobs, download their
results and errors. A key sees only the jobs it submitted; another key's job answers 404, as an unknown one."""

from __future__ import annotations

from typing import Literal

import pyarrow as pa
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from hfqueue.api import streams
from hfqueue.api.common import Page, client_of, errors, owner, page
from hfqueue.core.jobs import JobSpec, JobState
from hfqueue.errors import JobNotFoundError
from hfqueue.producer.client import Client, Job
from hfqueue.sinks.local import ROW_INDEX, error_files, part_files
from hfqueue.state import owners

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

Format = Literal["parquet", "jsonl"]
_MEDIA = {"parquet": "application/vnd.apache.parquet", "jsonl": "application/jsonl"}
_FILE = {200: {"description": "The file, streamed", "content": {m: {} for m in _MEDIA.values()}}}
# OpenAPI links: what a created job's id leads to (clients and schemathesis' stateful tests follow them).
_JOB_LINKS = {name: {"operationId": op, "parameters": {"job_id": "$response.body#/job_id"}}
              for name, op in (("GetJob", "getJob"), ("CancelJob", "cancelJob"), ("ResumeJob", "resumeJob"),
                               ("GetJobResults", "getJobResults"), ("GetJobErrors", "getJobErrors"))}


class JobOut(BaseModel):
    """A job's status, as ``Job.status()`` and ``hfq status --json`` give it."""

    job_id: str
    state: JobState
    task: str
    model: str
    rows_total: int
    rows_done: int
    rows_failed: int
    rows_truncated: int = 0
    rows_reused: int = 0
    chunks_total: int
    chunks_done: int
    chunks_failed: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    output_dir: str
    error: str | None
    dtype: str | None = None
    exact_batches: int = 0
    rows_per_second: float
    eta_seconds: float | None
    elapsed_seconds: float


def _job(client: Client, who: str, job_id: str) -> Job:
    """The job, when it belongs to ``who``; otherwise 404, exactly as for a job that does not exist."""
    try:
        record = client.store.get(job_id)
    except JobNotFoundError:
        record = {}
    if record.get("owner") != who:
        raise JobNotFoundError(f"no job {job_id!r} for this API key", value=job_id)
    return Job(client, job_id)


def _out(job: Job) -> JobOut:
    return JobOut(**job.status().summary())


@router.post("", status_code=201, response_model=JobOut, operation_id="createJob",
             responses={201: {"description": "The job, queued", "links": _JOB_LINKS}, **errors(400, 413, 503)})
def submit(spec: JobSpec, request: Request, who: str = Depends(owner)) -> JobOut:
    """Submit a job: the same spec as ``Client.submit`` (inline ``inputs`` or a ``dataset``)."""
    client = client_of(request)
    job = Job(client, client.sender.submit(spec, {"owner": who}))  # the record names the key that owns it
    owners.own(client.redis, who, "jobs", job.id, ttl=client.settings.job_ttl)
    return _out(job)


@router.get("", response_model=Page[JobOut], operation_id="listJobs", responses=errors())
def list_jobs(request: Request, who: str = Depends(owner), limit: int = Query(20, ge=1, le=100),
              after: str | None = Query(None, description="the last job id of the previous page")) -> Page[JobOut]:
    """This key's jobs, newest first, ``limit`` a page."""
    client = client_of(request)
    ids, more = owners.page(client.redis, who, "jobs", limit, after)
    data = []
    for job_id in ids:
        try:
            data.append(_out(Job(client, job_id)))
        except JobNotFoundError:  # expired between the index and the record
            continue
    return Page[JobOut](**page(data, ids, more))


@router.get("/{job_id}", response_model=JobOut, operation_id="getJob", responses=errors(404))
def status(job_id: str, request: Request, who: str = Depends(owner)) -> JobOut:
    """The job's state, counts, rate and ETA."""
    return _out(_job(client_of(request), who, job_id))


@router.post("/{job_id}/cancel", response_model=JobOut, operation_id="cancelJob", responses=errors(404))
def cancel(job_id: str, request: Request, who: str = Depends(owner)) -> JobOut:
    """Cancel the job: queued chunks never run, a running chunk stops at its next batch."""
    job = _job(client_of(request), who, job_id)
    job.cancel()
    return _out(job)


@router.post("/{job_id}/resume", response_model=JobOut, operation_id="resumeJob", responses=errors(404, 400))
def resume(job_id: str, request: Request, who: str = Depends(owner)) -> JobOut:
    """Send again the chunks without a part (and publish again, when that failed)."""
    client = client_of(request)
    _job(client, who, job_id)
    return _out(client.resume(job_id))


@router.get("/{job_id}/results", response_class=StreamingResponse, operation_id="getJobResults",
            responses={**_FILE, **errors(404, 409)})
def results(job_id: str, request: Request, who: str = Depends(owner),
            format: Format = Query("parquet", description="parquet or jsonl")) -> StreamingResponse:  # noqa: A002
    """The results of a finished job as one file (rows that failed are in ``/errors``), streamed."""
    job = _ended(_job(client_of(request), who, job_id))
    return _file(job, part_files(job.output_dir), format, "results")


@router.get("/{job_id}/errors", response_class=StreamingResponse, operation_id="getJobErrors",
            responses={**_FILE, **errors(404, 409)})
def job_errors(job_id: str, request: Request, who: str = Depends(owner),
               format: Format = Query("jsonl", description="jsonl or parquet")) -> StreamingResponse:  # noqa: A002
    """The rows of a finished job that failed: ``row_idx``, ``error_type``, ``error``."""
    job = _ended(_job(client_of(request), who, job_id))
    return _file(job, error_files(job.output_dir), format, "errors")


def _ended(job: Job) -> Job:
    state = job.status().state
    if not state.is_final:
        raise HTTPException(409, f"job {job.id} is {state.value}: its files are complete once it ends")
    return job


def _file(job: Job, parts: list, format: str, name: str) -> StreamingResponse:  # noqa: A002
    empty = pa.schema([(ROW_INDEX, pa.int64())])
    body = streams.parquet(parts, empty) if format == "parquet" else streams.jsonl(parts)
    return StreamingResponse(body, media_type=_MEDIA[format],
                             headers={"Content-Disposition": f'attachment; filename="{job.id}-{name}.{format}"'})
