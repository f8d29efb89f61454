"""An OpenAI batch's files: its plan (which rows of which job answer each request), and the output and error
files built from its jobs' Parquet parts once they have all ended.

``output.jsonl`` holds one line per request that ran whole, job by job and in file order within a job
(OpenAI does not promise an order either: match lines by ``custom_id``). ``errors.jsonl`` holds, in line
order, every rejected line, every request with a failed row (the row's error, status 500) and, for a
cancelled batch, every request that never ran (``batch_cancelled``). Together they hold each valid or
invalid line exactly once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from hfqueue import tasks
from hfqueue.core.jobs import JobState
from hfqueue.files import atomic_open
from hfqueue.openai_batch.requests import LineError, Request
from hfqueue.openai_batch.responses import failed_line, invalid_line, output_line
from hfqueue.sinks.local import ROW_INDEX, error_files, part_files
from hfqueue.state.store import JobStore

OUTPUT, ERRORS, BATCH = "output.jsonl", "errors.jsonl", "batch.json"
_PLAN, _INVALID = "requests.jsonl", "invalid.jsonl"


@dataclass
class Placed:
    """A valid request and where its rows went: rows ``first_row`` to ``first_row + n_rows`` of job ``job_id``."""

    request: Request
    job_id: str
    job_dir: str
    first_row: int
    n_rows: int


@dataclass
class Plan:
    """Every line of a batch: the placed requests by job, and the rejected lines."""

    by_job: dict[str, list[Placed]] = field(default_factory=dict)
    invalid: list[LineError] = field(default_factory=list)


def write_plan(folder: Path, placed: list[dict[str, Any]], invalid: list[LineError]) -> None:
    """Keep the batch's plan in its folder (written before any job can end)."""
    with atomic_open(folder / _PLAN) as fh:
        for entry in placed:
            fh.write(json.dumps(entry) + "\n")
    with atomic_open(folder / _INVALID) as fh:
        for err in invalid:
            fh.write(err.model_dump_json() + "\n")


def has_plan(folder: Path) -> bool:
    """Whether the batch's plan has been written (it is, before the batch leaves ``validating``)."""
    return (folder / _PLAN).exists()


def read_plan(folder: Path) -> Plan:
    """The plan :func:`write_plan` kept."""
    plan = Plan(invalid=read_invalid(folder))
    with (folder / _PLAN).open() as fh:
        for line in fh:
            entry = json.loads(line)
            # The rows themselves are in the job's inputs.jsonl; the response builders only count them.
            fields = {k: v for k, v in entry.items() if k in Request.model_fields and k != "rows"}
            placed = Placed(Request(**fields, rows=[None] * entry["n_rows"]),
                            entry["job_id"], entry["job_dir"], entry["first_row"], entry["n_rows"])
            plan.by_job.setdefault(placed.job_id, []).append(placed)
    return plan


def read_invalid(folder: Path) -> list[LineError]:
    """The batch's rejected lines, in line order."""
    path = folder / _INVALID
    if not path.exists():
        return []
    with path.open() as fh:
        return [LineError.model_validate_json(line) for line in fh]


def write_rejected(folder: Path, invalid: list[LineError]) -> None:
    """The error file of a batch none of whose lines is valid."""
    with atomic_open(folder / ERRORS) as fh:
        for err in invalid:
            fh.write(json.dumps(invalid_line(err)) + "\n")


def write_batch_object(folder: Path, obj: dict[str, Any]) -> None:
    """Keep the final batch object beside the files, for when Redis has forgotten the batch."""
    with atomic_open(folder / BATCH) as fh:
        json.dump(obj, fh, indent=2)


def progress(store: JobStore, plan: Plan) -> int:
    """Requests all of whose rows have run: their chunks are counted, or their job has ended."""
    done_requests = 0
    for job_id, placed in plan.by_job.items():
        state, chunks = store.fields(job_id, "state", "chunks")
        if state is None or chunks is None:
            continue
        if JobState(state).is_final:
            done_requests += len(placed)
            continue
        size = max(1, json.loads(chunks)[0]["end"])  # chunks are equal and start at row 0
        counted = store.counted(job_id)
        done_requests += sum(all(c in counted for c in range(p.first_row // size,
                                                             (p.first_row + p.n_rows - 1) // size + 1))
                             for p in placed)
    return done_requests


def assemble(store: JobStore, folder: Path, plan: Plan, *, cancelled: bool) -> tuple[int, int]:
    """Write ``output.jsonl`` and ``errors.jsonl`` from the ended jobs; return (requests completed, failed)."""
    import time

    created = int(time.time())
    errors: list[tuple[int, dict[str, Any]]] = [(e.line, invalid_line(e)) for e in plan.invalid]
    completed = 0
    with atomic_open(folder / OUTPUT) as out:
        for job_id, placed in plan.by_job.items():
            job_dir = folder / placed[0].job_dir
            results, failures = _results(job_dir, placed[0].request)
            state, job_error = store.fields(job_id, "state", "error")
            # A job that failed on its own before the batch was cancelled reports its own error.
            never_ran = cancelled and state == JobState.CANCELLED.value
            for p in placed:
                rows = [results.get(i) for i in range(p.first_row, p.first_row + p.n_rows)]
                if all(r is not None for r in rows):
                    out.write(json.dumps(output_line(p.request, rows, created)) + "\n")  # type: ignore[arg-type]
                    completed += 1
                    continue
                failure = next((failures[i] for i in range(p.first_row, p.first_row + p.n_rows) if i in failures),
                               None)
                errors.append((p.request.line, _failed(p.request, failure, job_error or "", never_ran)))
    errors.sort(key=lambda e: e[0])
    with atomic_open(folder / ERRORS) as fh:
        for _, line in errors:
            fh.write(json.dumps(line) + "\n")
    return completed, len(errors)


def _failed(req: Request, failure: str | None, job_error: str, cancelled: bool) -> dict[str, Any]:
    """The error-file line of a request with a row that failed, or that never ran."""
    if failure is not None:
        return failed_line(req, failure)
    if cancelled:
        return invalid_line(LineError(line=req.line, custom_id=req.custom_id, code="batch_cancelled", param=None,
                                      message="the batch was cancelled before this request ran"))
    return failed_line(req, job_error or "the request's job ended without running it")


def _results(job_dir: Path, request: Request) -> tuple[dict[int, dict[str, Any]], dict[int, str]]:
    """Row index -> output fields of the job's rows that ran, and row index -> error of those that failed."""
    columns = list(tasks.get(request.task).output_types(request.options))
    results: dict[int, dict[str, Any]] = {}
    for part in part_files(job_dir):
        for row in pq.read_table(part, columns=[ROW_INDEX, *columns]).to_pylist():
            results[row.pop(ROW_INDEX)] = row
    failures = {}
    for part in error_files(job_dir):
        for row in pq.read_table(part).to_pylist():
            failures[row[ROW_INDEX]] = f"{row['error_type']}: {row['error']}"
    return results, failures
