"""Which workers are alive and what they hold, for ``hfq workers`` and ``Client.live_workers()``.

Each model-serving process writes a short-lived record of itself (device, resident models, memory,
metrics address) every few seconds from its heartbeat thread. The record expires soon after the
process stops, so what a reader finds is what is alive: no ping round trip to every worker, and it
comes from the process that holds the models, not from the Celery parent.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import redis
from pydantic import BaseModel

from hfqueue.core.config import Settings
from hfqueue.state.keys import Keys

PRESENCE_TTL = 10  # seconds a worker record outlives its last heartbeat


class WorkerInfo(BaseModel):
    """One live model-serving process."""

    name: str  # the Celery node name
    host: str
    pid: int
    queue: str
    device: str
    devices: list[str] = []  # where its resident models' weights lie (several GPUs with HFQ_DEVICE_MAP=auto)
    models: list[dict[str, Any]] = []  # resident, least recently used first, each with its PEFT adapters
    rss_bytes: int | None = None
    gpu: list[dict[str, Any]] = []  # per device: allocated, reserved, total bytes
    metrics_url: str | None = None
    started_at: float
    seen_at: float = 0.0


def this_process(name: str, queue: str, device: str, started_at: float, metrics_url: str | None,
                 models: list[dict[str, Any]], devices: list[str] | None = None, *,
                 gpu: list[dict[str, Any]] | None = None) -> WorkerInfo:
    """The record of the calling process, with its resident memory measured now. ``devices``: where the resident
    models' weights lie (default: ``device``); ``gpu``: its devices' memory, measured by the caller (which knows
    whether it has touched CUDA)."""
    return WorkerInfo(name=name, host=socket.gethostname(), pid=os.getpid(), queue=queue, device=device,
                      devices=devices or [device], models=models, rss_bytes=_rss_bytes(), gpu=gpu or [],
                      metrics_url=metrics_url, started_at=started_at, seen_at=time.time())


def report(r: redis.Redis, info: WorkerInfo, *, keep: int) -> None:
    """Write ``info`` for the next PRESENCE_TTL seconds (a serving process's heartbeat); drop index entries of
    workers that stopped."""
    now = time.time()
    with r.pipeline() as p:
        p.set(Keys.worker(info.name), info.model_dump_json(), ex=PRESENCE_TTL)
        p.zadd(Keys.workers, {info.name: now})
        p.zremrangebyscore(Keys.workers, "-inf", now - PRESENCE_TTL)
        p.expire(Keys.workers, keep)  # the index goes too once no worker is left to prune it
        p.execute()


def live(r: redis.Redis) -> list[WorkerInfo]:
    """The workers whose record has not expired, by name."""
    names = sorted(str(n) for n in r.zrangebyscore(Keys.workers, time.time() - PRESENCE_TTL, "+inf"))
    records = r.mget([Keys.worker(n) for n in names]) if names else []
    return [WorkerInfo.model_validate_json(raw) for raw in records if raw]


def _rss_bytes() -> int | None:
    """Resident memory of this process (Linux), or None where /proc is not there."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def health(settings: Settings, *, worker: bool, timeout: float) -> tuple[bool, str]:
    """Whether Redis answers within ``timeout`` seconds (and, with ``worker``, a serving process of this host has
    reported its record), with the reason. Never starts the embedded redis-server."""
    from hfqueue.state.embedded import running_url
    from hfqueue.state.redis_server import address

    url = settings.broker_url or running_url(settings.state_dir)
    if url is None:
        return False, f"HFQ_BROKER_URL is unset and no embedded redis-server runs under {settings.state_dir}"
    r = redis.Redis.from_url(url, decode_responses=True, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        r.ping()
        if not worker:
            return True, f"Redis at {address(url)} answers"
        host = socket.gethostname()
        mine = [w.name for w in live(r) if w.host == host]
        if not mine:
            return False, f"Redis at {address(url)} answers, but no worker on {host} has reported in {PRESENCE_TTL} s"
        return True, f"Redis at {address(url)} answers; live on {host}: {', '.join(mine)}"
    except redis.RedisError as exc:
        return False, f"Redis at {address(url)} does not answer: {exc}"
    finally:
        r.close()
