"""The ``hfq`` command: submit, follow, cancel and resume jobs, run workers, stop the embedded Redis.

Exit codes: 0 done, 1 the job failed or was cancelled, 2 bad input or settings, 3 the job finished
with some rows failed, 124 a wait timed out.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from hfqueue.core.config import Settings, load_settings
from hfqueue.core.jobs import JobState, JobStatus
from hfqueue.errors import HfqError, JobFailedError, WaitTimeoutError
from hfqueue.state import embedded

EXIT_FAILED, EXIT_INPUT, EXIT_PARTIAL, EXIT_TIMEOUT = 1, 2, 3, 124


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``hfq``."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
        logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return int(args.func(args, settings) or 0)
    except WaitTimeoutError as exc:
        print(f"hfq: {exc}", file=sys.stderr)
        return EXIT_TIMEOUT
    except JobFailedError as exc:
        print(f"hfq: {exc}", file=sys.stderr)
        if getattr(args, "json", False) and exc.status is not None:
            print(json.dumps(exc.status.summary(), indent=2))
        return EXIT_FAILED
    except HfqError as exc:
        print(f"hfq: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hfq", description="Batch inference jobs for Hugging Face models, "
                                     "on Celery and Redis. Settings come from HFQ_* environment variables.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for name, func, helptext in (("submit", _submit, "submit a job and print its id"),
                                 ("run", _run, "submit a job and wait for it, with a progress bar")):
        p = sub.add_parser(name, help=helptext, description=helptext)
        _spec_arguments(p)
        if name == "run":
            p.add_argument("--timeout", type=float, help="give up waiting after this many seconds")
        p.add_argument("--json", action="store_true", help="print JSON")
        p.set_defaults(func=func)

    p = sub.add_parser("status", help="show a job's progress: live on a terminal until the job ends, else once "
                       "(an OpenAI batch id, batch_...: its batch object)")
    p.add_argument("job_id")
    p.add_argument("--chunks", action="store_true", help="also show each chunk's state")
    p.add_argument("--once", action="store_true", help="print the progress once, even on a terminal")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_status)

    p = sub.add_parser("wait", help="wait until a job (or OpenAI batch) ends (exit code tells how it ended)")
    p.add_argument("job_id")
    p.add_argument("--timeout", type=float, help="give up waiting after this many seconds (exit 124)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the final status as JSON")
    p.set_defaults(func=_wait)

    p = sub.add_parser("cancel", help="cancel a job (or OpenAI batch): queued chunks never run, the running one stops")
    p.add_argument("job_id")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cancel)

    p = sub.add_parser("resume", help="send again the chunks of a job that have no part (rebuilds a job Redis lost "
                       "from its output folder)")
    p.add_argument("job_id")
    p.add_argument("--output-dir", help="the job's output folder, when Redis lost the job and it is not "
                   "HFQ_OUTPUT_ROOT/JOB_ID (default: searched under HFQ_OUTPUT_ROOT)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_resume)

    p = sub.add_parser("jobs", help="list recent jobs, newest first")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_jobs)

    p = sub.add_parser("workers", help="list live workers: device, resident models, memory, metrics address")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_workers)

    p = sub.add_parser("flower", help="serve the Flower dashboard for the configured broker, with basic auth")
    p.add_argument("--address", help="listen address (default HFQ_FLOWER_ADDRESS)")
    p.add_argument("--port", type=int, help="listen port (default HFQ_FLOWER_PORT)")
    p.add_argument("--no-auth", action="store_true", help="no authentication (refused unless the address is loopback)")
    p.set_defaults(func=_flower)

    p = sub.add_parser("api", help="serve the HTTP API (jobs, OpenAI-compatible files and batches) with uvicorn")
    p.add_argument("--address", help="listen address (default HFQ_API_ADDRESS)")
    p.add_argument("--port", type=int, help="listen port (default HFQ_API_PORT)")
    p.set_defaults(func=_api)

    p = sub.add_parser("api-key", help="make an API key for `hfq api`: prints the key (give it to the client) and "
                       "the HFQ_API_KEYS entry holding its hash")
    p.add_argument("name", help="the key's name: what it creates belongs to this name")
    p.set_defaults(func=_api_key)

    p = sub.add_parser("worker", help="run a worker in the foreground (one model-serving process)")
    p.add_argument("--name", help="Celery node name (default hfq-PID@HOST)")
    p.add_argument("--loglevel", help="log level (default HFQ_LOG_LEVEL)")
    p.add_argument("--gpus", help="one worker per GPU, each pinned to its GPU and restarted if it dies: `all`, or "
                   "indexes / UUIDs such as 0,1 (metrics on HFQ_METRICS_PORT, +1, +2, ...)")
    p.set_defaults(func=_worker)

    p = sub.add_parser("health", help="exit 0 when Redis answers (and, with --worker, a worker on this host is "
                       "alive), else 1 with the reason: for container health checks")
    p.add_argument("--worker", action="store_true", help="also require a live serving process on this host")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for Redis (default 5)")
    p.set_defaults(func=_health)

    p = sub.add_parser("down", help="stop the embedded redis-server (its data stays in the state folder)")
    p.set_defaults(func=_down)

    p = sub.add_parser("demo", help="embed a real text dataset with all-MiniLM-L6-v2, end to end (make run)")
    p.add_argument("--rows", type=int, default=2000, help="sentences to embed")
    p.set_defaults(func=_demo)
    return parser


def _spec_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", help="task name, e.g. feature-extraction, text-classification (required unless "
                   "--openai-batch)")
    p.add_argument("--model", help="Hub model id or local model folder (default: the task's default model)")
    p.add_argument("--revision", help="model branch, tag or commit")
    p.add_argument("--adapter", help="PEFT adapter (LoRA, ...) to run the model with: Hub id or local adapter folder")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", nargs="+", help="Hub dataset id, local dataset folder, or data files (globs ok)")
    src.add_argument("--inputs-file", type=Path,
                     help="one input per line; a .jsonl file holds one JSON row per line (a string, a "
                          "{field: value} object, or a list of chat messages)")
    src.add_argument("--input", action="append", dest="inputs", help="an input row (repeat for more)")
    src.add_argument("--openai-batch", type=Path, metavar="FILE",
                     help="an OpenAI Batch API input file (JSONL: custom_id, method, url, body) for /v1/chat/completions, "
                          "/v1/completions or /v1/embeddings; body.model names a Hugging Face model. Prints the batch id")
    p.add_argument("--endpoint", help="with --openai-batch: the only url its lines may name")
    p.add_argument("--dataset-config", help="dataset configuration (subset) name")
    p.add_argument("--split", default="train", help="dataset split (default: train)")
    p.add_argument("--dataset-revision", help="dataset branch, tag or commit")
    p.add_argument("--column", help="input column of a one-field task (default: the task's, e.g. text)")
    p.add_argument("--columns", action="append", default=[], metavar="FIELD=COLUMN",
                   help="column of each field of a multi-field task, e.g. question=q (repeat for more)")
    p.add_argument("--output-dir", help="folder under HFQ_OUTPUT_ROOT (default: the job id)")
    p.add_argument("--output", help="also publish the results to hub://NAMESPACE/NAME[@BRANCH] (a Hub dataset repo; "
                   "the token comes from HF_TOKEN or `hf auth login` on the workers) or an fsspec URL (s3://..., a path)")
    p.add_argument("--public", action="store_true", help="create the --output Hub repo public (default: private)")
    p.add_argument("--chunk-size", type=int, help="rows per chunk (default: HFQ_CHUNK_SIZE)")
    p.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"])
    p.add_argument("--quantization", choices=["8bit", "4bit"], help="load weights quantized (CUDA workers only)")
    p.add_argument("--priority", choices=["high", "normal", "low"], help="queued chunks of higher priority run first "
                   "(default normal)")
    p.add_argument("--no-truncate", dest="truncate", action="store_false",
                   help="send rows longer than the model takes to the error file instead of cutting them")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="task option, e.g. pooling=cls or normalize=true (repeat for more)")


def _spec_fields(args: argparse.Namespace) -> dict[str, Any]:
    if not args.task:
        raise HfqError("--task is required (unless --openai-batch gives each request's endpoint)")
    fields: dict[str, Any] = {k: getattr(args, k) for k in (
        "task", "model", "revision", "adapter", "dataset_config", "split", "dataset_revision", "column", "output_dir",
        "chunk_size", "dtype", "quantization", "priority", "output") if getattr(args, k) is not None}
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
    from hfqueue.producer.client import Client

    return Client(settings)


def _submit(args: argparse.Namespace, settings: Settings) -> int:
    if args.openai_batch:
        return _submit_batch(args, settings)
    job = _client(settings).submit(**_spec_fields(args))
    print(json.dumps({"job_id": job.id}) if args.json else job.id)
    return 0


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

    print(json.dumps(obj, indent=2) if as_json else batch_text(obj))
    if obj["status"] in ("failed", "cancelled", "expired"):
        return EXIT_FAILED
    return EXIT_PARTIAL if obj["status"] == "completed" and obj["request_counts"]["failed"] else 0


def _run(args: argparse.Namespace, settings: Settings) -> int:
    if args.openai_batch:
        return _submit_batch(args, settings, wait=True, timeout=args.timeout)
    job = _client(settings).submit(**_spec_fields(args))
    print(f"submitted job {job.id}", file=sys.stderr)
    return _finish(job, job.wait(args.timeout, progress=sys.stderr.isatty()), args.json)


def _wait(args: argparse.Namespace, settings: Settings) -> int:
    if _is_batch(args):
        return _batch_outcome(_client(settings).openai_batch(args.job_id).wait(args.timeout), args.json)
    job = _client(settings).job(args.job_id)
    return _finish(job, job.wait(args.timeout, progress=not args.no_progress and sys.stderr.isatty()), args.json)


def _finish(job: Any, status: JobStatus, as_json: bool) -> int:
    print(json.dumps(status.summary(), indent=2) if as_json else _describe(job, status))
    return EXIT_PARTIAL if status.state == JobState.COMPLETED_WITH_ERRORS else 0


def _is_batch(args: argparse.Namespace) -> bool:
    return str(args.job_id).startswith("batch_")


def _status(args: argparse.Namespace, settings: Settings) -> int:
    from hfqueue.cli import views

    if _is_batch(args):
        obj = _client(settings).openai_batch(args.job_id).status()
        print(json.dumps(obj, indent=2) if args.json else views.batch_text(obj))
        return 0

    job = _client(settings).job(args.job_id)
    if not args.json and not args.once and sys.stdout.isatty():
        views.live_status(job)
    status, chunks = job.status(), job.chunks()
    if args.json:
        out = views.status_json(status, chunks)
        if args.chunks:
            out["chunk_states"] = {str(k): v for k, v in sorted(chunks.items())}
        print(json.dumps(out, indent=2))
        return 0
    if args.once or not sys.stdout.isatty():  # the live view has drawn the final state already
        print(views.status_text(status, chunks))
    for index, info in sorted(chunks.items()) if args.chunks else ():
        print(f"  chunk {index}: {info.get('state')} {info.get('worker', '')} {info.get('error', '')}".rstrip())
    return 0


def _cancel(args: argparse.Namespace, settings: Settings) -> int:
    if _is_batch(args):
        from hfqueue.cli.views import batch_text

        obj = _client(settings).openai_batch(args.job_id).cancel()
        print(json.dumps(obj, indent=2) if args.json else batch_text(obj))
        return 0
    job = _client(settings).job(args.job_id)
    status = job.cancel()
    print(json.dumps(status.summary(), indent=2) if args.json else _describe(job, status))
    return 0


def _resume(args: argparse.Namespace, settings: Settings) -> int:
    from dataclasses import asdict

    from hfqueue.producer.recovery import resume

    client = _client(settings)
    report = resume(client, args.job_id, args.output_dir)
    job = client.job(report.job_id)
    status = job.status()
    if args.json:
        print(json.dumps({**asdict(report), "state": report.state.value, "status": status.summary()}, indent=2))
        return 0
    how = "rebuilt from its output folder, " if report.rebuilt else ""
    print(f"resumed job {report.job_id}: {how}{report.chunks_on_disk} of {report.chunks_total} chunks already on "
          f"disk, {report.chunks_enqueued} sent again")
    print(_describe(job, status))
    return 0


def _jobs(args: argparse.Namespace, settings: Settings) -> int:
    from hfqueue.cli.views import jobs_table

    statuses = _client(settings).jobs(args.limit)
    if args.json:
        print(json.dumps([s.summary() for s in statuses], indent=2))
        return 0
    _print(jobs_table(statuses, sys.stdout.isatty()))
    return 0


def _workers(args: argparse.Namespace, settings: Settings) -> int:
    from hfqueue.cli.views import workers_table

    workers = _client(settings).live_workers()
    if args.json:
        print(json.dumps([w.model_dump(mode="json") for w in workers], indent=2))
        return 0
    _print(workers_table(workers, sys.stdout.isatty()) if workers else "no live workers")
    return 0


def _print(view: Any) -> None:
    if isinstance(view, str):
        print(view)
        return
    from rich.console import Console

    Console().print(view)


def _describe(job: Any, status: JobStatus) -> str:
    from hfqueue.cli.views import status_text

    return status_text(status, job.chunks())


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    if args.gpus:
        from hfqueue.cli.supervisor import Supervisor, parse_gpus

        return Supervisor(settings, parse_gpus(args.gpus), args.name, args.loglevel).run()
    from hfqueue.cli.revival import watch_embedded
    from hfqueue.worker.main import run_worker

    watch_embedded(settings, reconcile=True)  # the embedded default: bring a crashed server back, finish its jobs
    run_worker(settings, name=args.name, loglevel=args.loglevel)
    return 0


def _health(args: argparse.Namespace, settings: Settings) -> int:
    from hfqueue.state.presence import health

    healthy, reason = health(settings, worker=args.worker, timeout=args.timeout)
    print(("healthy: " if healthy else "unhealthy: ") + reason, file=sys.stdout if healthy else sys.stderr)
    return 0 if healthy else 1


def _flower(args: argparse.Namespace, settings: Settings) -> int:
    from hfqueue.cli.revival import watch_embedded
    from hfqueue.monitoring.flower import run_flower

    watch_embedded(settings)
    run_flower(settings, address=args.address or settings.flower_address, port=args.port or settings.flower_port,
               auth=not args.no_auth)
    return 0


def _api(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from hfqueue.api.app import create_app
    from hfqueue.cli.revival import watch_embedded

    watch_embedded(settings)
    if not settings.api_keys:
        print("hfq api: warning: HFQ_API_KEYS is empty, so every call but /health is refused; `hfq api-key NAME` "
              "makes a key", file=sys.stderr)
    uvicorn.run(create_app(settings), host=args.address or settings.api_address, port=args.port or settings.api_port,
                log_level=settings.log_level.lower(), proxy_headers=False, server_header=False)
    return 0


def _api_key(args: argparse.Namespace, settings: Settings) -> int:
    from hfqueue.core.apikeys import check_hashes, hash_key, new_key

    key = new_key()
    entry = {args.name: hash_key(key)}
    try:
        check_hashes(entry)  # a name the settings would refuse fails here, not at the API's start
    except ValueError as exc:
        raise HfqError(str(exc), value=args.name) from None
    print(f"API key for {args.name} (shown once; give it to the client):\n  {key}\n"
          f"add to HFQ_API_KEYS (a JSON object of every key's hash):\n  {json.dumps(entry)}")
    return 0


def _down(args: argparse.Namespace, settings: Settings) -> int:
    stopped = embedded.stop_embedded(settings.state_dir)
    print("stopped the embedded redis-server" if stopped else "no embedded redis-server was running")
    return 0


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from hfqueue.cli.demo import run_demo

    return run_demo(settings, rows=args.rows)
