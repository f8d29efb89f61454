"""The job commands of ``hfq``: submit, run, status, wait, cancel and resume jobs (and OpenAI batches), list jobs
and workers. Each takes the parsed arguments and the settings and returns the exit code."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from hfqueue.core.config import Settings
from hfqueue.core.jobs import JobState, JobStatus
from hfqueue.errors import HfqError

EXIT_FAILED, EXIT_INPUT, EXIT_PARTIAL, EXIT_TIMEOUT = 1, 2, 3, 124


def submit(args: argparse.Namespace, settings: Settings) -> int:
    """``hfq submit``: submit a job (or OpenAI batch) and print its id."""
    if args.openai_batch:
        return _submit_batch(args, settings)
    job = _client(settings).submit(**_spec_fields(args))
    print(json.dumps({"job_id": job.id}) if args.json else job.id)
    return 0


def run(args: argparse.Namespace, settings: Settings) -> int:
    """``hfq run``: submit a job and wait for it, with a progress bar."""
    if args.openai_batch:
        return _submit_batch(args, settings, wait=True, timeout=args.timeout)
    job = _client(settings).submit(**_spec_fields(args))
    print(f"submitted job {job.id}", file=sys.stderr)
    return _finish(job, job.wait(args.timeout, progress=sys.stderr.isatty()), args.json)


def wait(args: argparse.Namespace, settings: Settings) -> int:
    """``hfq wait``: wait until a job or batch ends; the exit code tells how it ended."""
    if _is_batch(args):
        return _batch_outcome(_client(settings).openai_batch(args.job_id).wait(args.timeout), args.json)
    job = _client(settings).job(args.job_id)
    return _finish(job, job.wait(args.timeout, progress=not args.no_progress and sys.stderr.isatty()), args.json)


def status(args: argparse.Namespace, settings: Settings) -> int:
    """``hfq status``: a job's progress, live on a terminal; a batch's object."""
    from hfqueue.cli import views

    if _is_batch(args):
        obj = _client(settings).openai_batch(args.job_id).status()
        print(json.dumps(obj, indent=2) if args.json else views.batch_text(obj))
        return 0

    job = _client(settings).job(args.job_id)
    if not args.json and not args.once and sys.stdout.isatty():
        views.live_status(job)
    current, chunks = job.status(), job.chunks()
    if args.json:
        out = views.status_json(current, chunks)
        if args.chunks:
            out["chunk_states"] = {str(k): v for k, v in sorted(chunks.items())}
        print(json.dumps(out, indent=2))
        return 0
    if args.once or not sys.stdout.isatty():  # the live view has drawn the final state already
        print(views.status_text(current, chunks))
    for index, info in sorted(chunks.items()) if args.chunks else ():
        print(f"  chunk {index}: {info.get('state')} {info.get('worker', '')} {info.get('error', '')}".rstrip())
    return 0


def cancel(args: argparse.Namespace, settings: Settings) -> int:
    """``hfq cancel``: cancel a job or batch."""
    if _is_batch(args):
        from hfqueue.cli.views import batch_text

        obj = _client(settings).openai_batch(args.job_id).cancel()
        print(json.dumps(obj, indent=2) if args.json else batch_text(obj))
        return 0
    job = _client(settings).job(args.job_id)
    now = job.cancel()
    print(json.dumps(now.summary(), indent=2) if args.json else _describe(job, now))
    return 0


def resume(args: argparse.Namespace, settings: Settings) -> int:
    """``hfq resume``: send again the chunks of a job that have no part, rebuilding a job Redis lost."""
    from dataclasses import asdict

    from hfqueue.producer.recovery import resume as resume_job

    client = _client(settings)
    report = resume_job(client.sender, client.hooks, args.job_id, args.output_dir)
    job = client.job(report.job_id)
    now = job.status()
    if args.json:
        print(json.dumps({**asdict(report), "state": report.state.value, "status": now.summary()}, indent=2))
        return 0
    how = "rebuilt from its output folder, " if report.rebuilt else ""
    print(f"resumed job {report.job_id}: {how}{report.chunks_on_disk} of {report.chunks_total} chunks already on "
          f"disk, {report.chunks_enqueued} sent again")
    print(_describe(job, now))
    return 0


def list_jobs(args: argparse.Namespace, settings: Settings) -> int:
    """``hfq jobs``: recent jobs, newest first."""
    from hfqueue.cli.views import jobs_table

    statuses = _client(settings).jobs(args.limit)
    if args.json:
        print(json.dumps([s.summary() for s in statuses], indent=2))
        return 0
    _print(jobs_table(statuses, sys.stdout.isatty()))
    return 0


def list_workers(args: argparse.Namespace, settings: Settings) -> int:
    """``hfq workers``: live workers, their devices, resident models and memory."""
    from hfqueue.cli.views import workers_table

    workers = _client(settings).live_workers()
    if args.json:
        print(json.dumps([w.model_dump(mode="json") for w in workers], indent=2))
        return 0
    _print(workers_table(workers, sys.stdout.isatty()) if workers else "no live workers")
    return 0


def _spec_fields(args: argparse.Namespace) -> dict[str, Any]:
    if not args.task:
        raise HfqError("--task is required (unless --openai-batch gives each request's endpoint)")
    fields: dict[str, Any] = {k: getattr(args, k) for k in (
        "task", "model", "revision", "adapter", "dataset_config", "split", "dataset_revision", "column", "output_dir",
        "chunk_size", "dtype", "engine", "quantization", "priority", "output", "reuse") if getattr(args, k) is not None}
    if args.public:
        fields["output_private"] = False
    if not args.truncate:
        fields["truncate"] = False
    if args.columns:
        fields["columns"] = dict(_pair(c, "--columns") for c in args.columns)
    if args.dataset:
        fields["dataset"] = args.dataset[0] if len(args.dataset) == 1 else args.dataset
    elif args.inputs_file:
        lines = [line for line in args.inputs_file.read_text().splitlines() if line.strip()]
        fields["inputs"] = [_json_line(args.inputs_file, n, line) for n, line in enumerate(lines, 1)] \
            if args.inputs_file.suffix == ".jsonl" else lines
    else:
        fields["inputs"] = args.inputs
    fields["options"] = {}
    for text in args.option:
        key, value = _pair(text, "--option")
        try:
            fields["options"][key] = json.loads(value)
        except json.JSONDecodeError:
            fields["options"][key] = value
    return fields


def _pair(text: str, flag: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise HfqError(f"{flag} takes KEY=VALUE, got {text!r}")
    return key, value


def _json_line(path: Path, number: int, line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise HfqError(f"{path} line {number} is not JSON ({exc.msg}); a .jsonl inputs file holds one JSON "
                       "value per line", value=number) from None


def _client(settings: Settings) -> Any:
    from hfqueue.client import Client  # the one with OpenAI batches wired in

    return Client(settings)


def _submit_batch(args: argparse.Namespace, settings: Settings, wait: bool = False,
                  timeout: float | None = None) -> int:
    batch = _client(settings).submit_openai_batch(args.openai_batch, endpoint=args.endpoint,
                                                  priority=args.priority or "normal")
    if not wait:
        print(json.dumps({"batch_id": batch.id}) if args.json else batch.id)
        return 0
    print(f"submitted batch {batch.id}", file=sys.stderr)
    return _batch_outcome(batch.wait(timeout), args.json)


def _batch_outcome(obj: dict[str, Any], as_json: bool) -> int:
    """Print a batch object; exit 0 completed without failures, 3 with some, 1 failed or cancelled."""
    from hfqueue.cli.views import batch_text
    from hfqueue.lifecycle.batches import BatchState

    print(json.dumps(obj, indent=2) if as_json else batch_text(obj))
    state = BatchState(obj["status"])
    if state.is_final and state != BatchState.COMPLETED:  # failed, cancelled or expired
        return EXIT_FAILED
    return EXIT_PARTIAL if state == BatchState.COMPLETED and obj["request_counts"]["failed"] else 0


def _finish(job: Any, final: JobStatus, as_json: bool) -> int:
    print(json.dumps(final.summary(), indent=2) if as_json else _describe(job, final))
    return EXIT_PARTIAL if final.state == JobState.COMPLETED_WITH_ERRORS else 0


def _is_batch(args: argparse.Namespace) -> bool:
    return str(args.job_id).startswith("batch_")


def _print(view: Any) -> None:
    if isinstance(view, str):
        print(view)
        return
    from rich.console import Console

    Console().print(view)


def _describe(job: Any, current: JobStatus) -> str:
    from hfqueue.cli.views import status_text

    return status_text(current, job.chunks())
