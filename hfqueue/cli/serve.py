"""The ``hfq`` commands that run a process or manage the installation: worker, flower, api, api-key, health,
down and demo. Each takes the parsed arguments and the settings and returns the exit code."""

from __future__ import annotations

import argparse
import json
import sys

from hfqueue.core.config import Settings
from hfqueue.core.hooks import Hooks, SafeHooks
from hfqueue.errors import HfqError
from hfqueue.state import embedded


def worker(args: argparse.Namespace, settings: Settings) -> int:
    """``hfq worker``: run a worker in the foreground, or one per GPU under a supervisor."""
    if args.gpus:
        from hfqueue.cli.supervisor import Supervisor, parse_gpus

        return Supervisor(settings, parse_gpus(args.gpus), args.name, args.loglevel).run()
    from hfqueue.cli.revival import watch_embedded
    from hfqueue.worker.main import run_worker

    watch_embedded(settings, reconcile=True)  # the embedded default: bring a crashed server back, finish its jobs
    run_worker(settings, hooks=lambda node, device: serving_hooks(settings, node, device), name=args.name,
               loglevel=args.loglevel)
    return 0


def serving_hooks(settings: Settings, node: str, device: str) -> Hooks:
    """What a worker's serving process tells: Prometheus metrics, and OpenAI batches whose last job it ends.

    Built in the serving child (never the forking parent), so the imports wait until then too.
    """
    from hfqueue.monitoring.metrics import PrometheusHooks
    from hfqueue.openai_batch.hooks import BatchHooks
    from hfqueue.producer.client import Client

    return SafeHooks([PrometheusHooks(node, device), BatchHooks(lambda: Client(settings))])


def health(args: argparse.Namespace, settings: Settings) -> int:
    """``hfq health``: exit 0 when Redis (and, with --worker, a worker on this host) answers, else 1."""
    from hfqueue.state.presence import health as check_health

    healthy, reason = check_health(settings, worker=args.worker, timeout=args.timeout)
    print(("healthy: " if healthy else "unhealthy: ") + reason, file=sys.stdout if healthy else sys.stderr)
    return 0 if healthy else 1


def flower(args: argparse.Namespace, settings: Settings) -> int:
    """``hfq flower``: serve the Flower dashboard."""
    from hfqueue.cli.revival import watch_embedded
    from hfqueue.monitoring.flower import run_flower

    watch_embedded(settings)
    run_flower(settings, address=args.address or settings.flower_address, port=args.port or settings.flower_port,
               auth=not args.no_auth)
    return 0


def api(args: argparse.Namespace, settings: Settings) -> int:
    """``hfq api``: serve the HTTP API with uvicorn."""
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


def api_key(args: argparse.Namespace, settings: Settings) -> int:
    """``hfq api-key``: make an API key and print the HFQ_API_KEYS entry holding its hash."""
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


def down(args: argparse.Namespace, settings: Settings) -> int:
    """``hfq down``: stop the embedded redis-server."""
    stopped = embedded.stop_embedded(settings.state_dir)
    print("stopped the embedded redis-server" if stopped else "no embedded redis-server was running")
    return 0


def demo(args: argparse.Namespace, settings: Settings) -> int:
    """``hfq demo``: embed a real text dataset with all-MiniLM-L6-v2, end to end."""
    from hfqueue.cli.demo import run_demo

    return run_demo(settings, rows=args.rows)
