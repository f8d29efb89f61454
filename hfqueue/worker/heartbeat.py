"""A serving process's heartbeat: every few seconds it says it is alive, and what it holds, from its own thread.

Each beat keeps this process's end of the request lane alive (:meth:`~hfqueue.state.lane.Lane.heartbeat`),
reports its presence record for ``hfq workers`` and routing (:func:`~hfqueue.state.presence.report`),
registers its own chunk queues (:func:`~hfqueue.state.routing.register_queues`) and sweeps the queues of
workers that stopped onto the shared ones. Its own thread: the serving thread may wait minutes for the
model lock behind a long batch, and a missed beat would make the others sweep this process's work.
"""

from __future__ import annotations

import logging
import threading
import time

from hfqueue.core.devices import gpu_memory
from hfqueue.state import presence, routing
from hfqueue.state.lane import HEARTBEAT_EVERY, Lane
from hfqueue.worker.context import WorkerContext
from hfqueue.worker.models import resolve_device
from hfqueue.worker.outage import Outage

logger = logging.getLogger(__name__)


def start(ctx: WorkerContext, lane: Lane) -> threading.Thread:
    """Beat once now (so the lane's consumer is known before it takes anything), then from a daemon thread."""
    lane.heartbeat()
    thread = threading.Thread(target=beat_forever, args=(ctx, lane), name="hfq-heartbeat", daemon=True)
    thread.start()
    return thread


def beat_forever(ctx: WorkerContext, lane: Lane) -> None:
    """Beat every HEARTBEAT_EVERY seconds until the process ends; Redis outages are logged once and ridden out."""
    device, started = resolve_device(ctx.settings.device), time.time()
    outage = Outage(logger, "heartbeat")
    while True:
        try:
            beat(ctx, lane, device, started)
            outage.ok()
        except Exception as exc:  # noqa: BLE001 - Redis may be restarting; the next beat retries
            if not outage.failed(exc):
                logger.warning("heartbeat failed", exc_info=True)
        time.sleep(HEARTBEAT_EVERY)


def beat(ctx: WorkerContext, lane: Lane, device: str, started_at: float) -> None:
    """One heartbeat of this serving process (``device``: its resolved device; ``started_at``: when it started)."""
    settings = ctx.settings
    lane.heartbeat()
    info = presence.this_process(ctx.worker, settings.queue, device, started_at, ctx.metrics_url,
                                 ctx.models.resident(), ctx.models.devices(),
                                 gpu=gpu_memory() if device.startswith("cuda") else [])
    presence.report(ctx.redis, info, keep=settings.job_ttl)
    routing.register_queues(ctx.redis, settings.queue, ctx.worker, keep=settings.job_ttl)
    moved = routing.sweep(ctx.redis, settings.queue, redelivery_window=1.2 * settings.visibility_timeout + 60)
    if moved:
        logger.warning("moved %d chunks queued for workers that stopped onto the shared queues", moved)
