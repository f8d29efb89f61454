"""The argument parser of ``hfq``: its commands, their options and help texts."""

from __future__ import annotations

import argparse
from pathlib import Path

from hfqueue.cli import jobs, results_cache, serve


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``hfq``: each command's parser sets ``func``, the function that runs it."""
    parser = argparse.ArgumentParser(prog="hfq", description="Batch inference jobs for Hugging Face models, "
                                     "on Celery and Redis. Settings come from HFQ_* environment variables.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for name, func, helptext in (("submit", jobs.submit, "submit a job and print its id"),
                                 ("run", jobs.run, "submit a job and wait for it, with a progress bar")):
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
    p.set_defaults(func=jobs.status)

    p = sub.add_parser("wait", help="wait until a job (or OpenAI batch) ends (exit code tells how it ended)")
    p.add_argument("job_id")
    p.add_argument("--timeout", type=float, help="give up waiting after this many seconds (exit 124)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the final status as JSON")
    p.set_defaults(func=jobs.wait)

    p = sub.add_parser("cancel", help="cancel a job (or OpenAI batch): queued chunks never run, the running one stops")
    p.add_argument("job_id")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=jobs.cancel)

    p = sub.add_parser("resume", help="send again the chunks of a job that have no part (rebuilds a job Redis lost "
                       "from its output folder)")
    p.add_argument("job_id")
    p.add_argument("--output-dir", help="the job's output folder, when Redis lost the job and it is not "
                   "HFQ_OUTPUT_ROOT/JOB_ID (default: searched under HFQ_OUTPUT_ROOT)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=jobs.resume)

    p = sub.add_parser("jobs", help="list recent jobs, newest first")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=jobs.list_jobs)

    p = sub.add_parser("workers", help="list live workers: device, resident models, memory, metrics address")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=jobs.list_workers)

    p = sub.add_parser("flower", help="serve the Flower dashboard for the configured broker, with basic auth")
    p.add_argument("--address", help="listen address (default HFQ_FLOWER_ADDRESS)")
    p.add_argument("--port", type=int, help="listen port (default HFQ_FLOWER_PORT)")
    p.add_argument("--no-auth", action="store_true", help="no authentication (refused unless the address is loopback)")
    p.set_defaults(func=serve.flower)

    p = sub.add_parser("api", help="serve the HTTP API (jobs, OpenAI-compatible files and batches) with uvicorn")
    p.add_argument("--address", help="listen address (default HFQ_API_ADDRESS)")
    p.add_argument("--port", type=int, help="listen port (default HFQ_API_PORT)")
    p.set_defaults(func=serve.api)

    p = sub.add_parser("api-key", help="make an API key for `hfq api`: prints the key (give it to the client) and "
                       "the HFQ_API_KEYS entry holding its hash")
    p.add_argument("name", help="the key's name: what it creates belongs to this name")
    p.set_defaults(func=serve.api_key)

    p = sub.add_parser("worker", help="run a worker in the foreground (one model-serving process)")
    p.add_argument("--name", help="Celery node name (default hfq-PID@HOST)")
    p.add_argument("--loglevel", help="log level (default HFQ_LOG_LEVEL)")
    p.add_argument("--gpus", help="one worker per GPU, each pinned to its GPU and restarted if it dies: `all` (those "
                   "CUDA_VISIBLE_DEVICES leaves, else every GPU nvidia-smi lists), or indexes (nvidia-smi's) / UUIDs "
                   "such as 0,1 (metrics on HFQ_METRICS_PORT, +1, +2, ...)")
    p.set_defaults(func=serve.worker)

    p = sub.add_parser("health", help="exit 0 when Redis answers (and, with --worker, a worker on this host is "
                       "alive), else 1 with the reason: for container health checks")
    p.add_argument("--worker", action="store_true", help="also require a live serving process on this host")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for Redis (default 5)")
    p.set_defaults(func=serve.health)

    p = sub.add_parser("cache", help="the result cache (HFQ_CACHE_DIR): its size and hit rates, or prune it")
    cache_sub = p.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    q = cache_sub.add_parser("stats", help="size, entries, lookups and hit rate per model")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=results_cache.stats)
    q = cache_sub.add_parser("prune", help="drop results: those unused for --older-than (of --model), then the least "
                             "recently used until within HFQ_CACHE_MAX_GB")
    q.add_argument("--older-than", type=results_cache.age, metavar="AGE",
                   help="drop results unused for this long: 30d, 12h, 90m, 45s")
    q.add_argument("--model", help="only this model's results (as jobs name it)")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=results_cache.prune)

    p = sub.add_parser("down", help="stop the embedded redis-server (its data stays in the state folder)")
    p.set_defaults(func=serve.down)

    p = sub.add_parser("demo", help="embed a real text dataset with all-MiniLM-L6-v2, end to end (make run)")
    p.add_argument("--rows", type=int, default=2000, help="sentences to embed")
    p.set_defaults(func=serve.demo)
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
                     help="an OpenAI Batch API input file (JSONL: custom_id, method, url, body) for "
                          "/v1/chat/completions, /v1/completions or /v1/embeddings; body.model names a Hugging Face "
                          "model. Prints the batch id")
    p.add_argument("--endpoint", help="with --openai-batch: the only url its lines may name")
    p.add_argument("--dataset-config", help="dataset configuration (subset) name")
    p.add_argument("--split", default="train", help="dataset split (default: train)")
    p.add_argument("--dataset-revision", help="dataset branch, tag or commit")
    p.add_argument("--column", help="input column of a one-field task (default: the task's, e.g. text)")
    p.add_argument("--columns", action="append", default=[], metavar="FIELD=COLUMN",
                   help="column of each field of a multi-field task, e.g. question=q (repeat for more)")
    p.add_argument("--output-dir", help="folder under HFQ_OUTPUT_ROOT (default: the job id)")
    p.add_argument("--output", help="also publish the results to hub://NAMESPACE/NAME[@BRANCH] (a Hub dataset repo; "
                   "the token comes from HF_TOKEN or `hf auth login` on the workers) or an fsspec URL (s3://..., "
                   "a path)")
    p.add_argument("--public", action="store_true", help="create the --output Hub repo public (default: private)")
    p.add_argument("--chunk-size", type=int, help="rows per chunk (default: HFQ_CHUNK_SIZE)")
    p.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"])
    p.add_argument("--engine", choices=["torch", "onnx", "onnx-int8"], help="engine the model body runs on (encoder tasks)")
    p.add_argument("--quantization", choices=["8bit", "4bit"], help="load weights quantized (CUDA workers only)")
    p.add_argument("--priority", choices=["high", "normal", "low"], help="queued chunks of higher priority run first "
                   "(default normal)")
    p.add_argument("--reuse", action=argparse.BooleanOptionalAction, default=None,
                   help="copy rows run before from the result cache instead of computing them, and store new results "
                        "(default HFQ_REUSE: on); --no-reuse computes every row")
    p.add_argument("--no-truncate", dest="truncate", action="store_false",
                   help="send rows longer than the model takes to the error file instead of cutting them")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="task option, e.g. pooling=cls or normalize=true (repeat for more)")
