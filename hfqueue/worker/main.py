"""``hfq worker``'s process: a Celery worker serving chunk tasks, and its hand-back of queued chunks on a warm stop."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable

from celery.signals import worker_shutdown
from redis.backoff import NoBackoff
from redis.retry import Retry

from hfqueue.core.config import Settings
from hfqueue.core.hooks import Hooks
from hfqueue.state.broker import broker_url, make_celery
from hfqueue.state.routing import consumed_queues

logger = logging.getLogger(__name__)


def run_worker(settings: Settings, *, hooks: Callable[[str, str], Hooks] | None = None, name: str | None = None,
               loglevel: str | None = None) -> None:
    """Serve chunk tasks in this process until stopped (``hfq worker``), once Redis answers and passes the
    start-up checks (:mod:`hfqueue.worker.preflight`).

    ``hooks(node, device)`` builds the hooks of the serving process (metrics, OpenAI batches: chosen by the
    caller, ``hfq``); it is called in the serving child, which may touch CUDA, never here. None: no hooks.

    One prefork child serves models: the hard time limit stays enforceable and a child that dies hands
    its chunk back, while the parent never touches CUDA.
    """
    from hfqueue.worker import chunk_task as tasks
    from hfqueue.worker.outage import QuietRetries
    from hfqueue.worker.preflight import preflight

    url = broker_url(settings)
    preflight(settings, url)
    app = make_celery(settings, url)
    node = name or f"hfq-{os.getpid()}@{socket.gethostname()}"
    tasks.register(app, settings, url, node, hooks)
    worker_shutdown.connect(lambda **_: _hand_back(settings, url, node), weak=False)
    QuietRetries().install()  # one line per broker outage, not one per retry
    app.worker_main([
        "worker", "--pool=prefork", "--concurrency=1",
        f"--queues={','.join(consumed_queues(settings.queue, node))}",
        f"--hostname={node}", f"--loglevel={loglevel or settings.log_level}", "--without-mingle",
        "--without-gossip", "--task-events",
    ])


def _hand_back(settings: Settings, url: str, node: str) -> None:
    # A worker stopping warm (a scale-down, a deploy) leaves no chunk behind in its own queues.
    import redis

    from hfqueue.state.routing import hand_back

    # One quick try: a stopping worker must not wait out a Redis that is gone; the others sweep its queue then.
    r = redis.Redis.from_url(url, decode_responses=True, socket_timeout=5, socket_connect_timeout=2,
                             retry=Retry(NoBackoff(), 0))
    try:
        moved = hand_back(r, settings.queue, node)
    except redis.RedisError as exc:
        logger.warning("could not hand back this worker's queued chunks (%s); the other workers will sweep them", exc)
        return
    finally:
        r.close()
    if moved:
        logger.info("handed %d chunks queued for this worker back to the shared queues", moved)
