"""The connections both ends share: the broker URL, Redis clients, and the Celery app with its task names.

Producers send with it and workers consume with it, so neither imports the other.
"""

from __future__ import annotations

from typing import Any

import redis
from celery import Celery
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from hfqueue.core.config import Settings
from hfqueue.state import embedded

CHUNK_TASK = "hfqueue.run_chunk"


def broker_url(settings: Settings) -> str:
    """The configured broker URL, or the embedded redis-server's (started on first use)."""
    return settings.broker_url or embedded.ensure_running(settings.state_dir)


def make_celery(settings: Settings, url: str) -> Celery:
    """A Celery app configured for hfqueue; it does not become Celery's global current app."""
    app = Celery("hfqueue", set_as_current=False)
    app.conf.update(celery_config(settings, url))
    return app


def redis_client(url: str, settings: Settings) -> redis.Redis:
    """A Redis client that rides out a Redis restart: timeouts, keepalive, and retries with back-off."""
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=settings.redis_socket_timeout,
        socket_connect_timeout=settings.redis_socket_timeout,
        socket_keepalive=True,
        health_check_interval=settings.redis_health_check_interval,
        retry=Retry(ExponentialBackoff(cap=5.0, base=0.2), retries=12),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )


def celery_config(settings: Settings, broker_url: str) -> dict[str, Any]:
    """Celery configuration for long GPU chunks on Redis (see RELIABILITY in the README).

    Each value is a decision, not a default: late acks so a crash mid-chunk re-delivers the chunk,
    prefetch 1 so no chunk waits behind a busy process, a visibility timeout above the hard time limit
    so a running chunk is not handed out twice, socket timeouts and keepalives so a worker does not
    hang on a dead connection after Redis restarts, running chunks kept running through a broker
    outage, JSON only.
    """
    transport = {
        "visibility_timeout": settings.visibility_timeout,
        "socket_timeout": settings.redis_socket_timeout,
        "socket_connect_timeout": settings.redis_socket_timeout,
        "socket_keepalive": True,
        "health_check_interval": settings.redis_health_check_interval,
        # Kombu looks for chunks whose worker vanished (unacked past the visibility timeout) every
        # interval x throttle seconds, 100 s by default: look every tenth of the timeout instead, so a
        # chunk held by a SIGKILLed worker comes back within 1.1 visibility timeouts.
        "unacked_restore_interval": max(1, min(60, settings.visibility_timeout // 10)),
        "unacked_restore_throttle": 1,
        # Poll a worker's queues in the order it names them (hfq.high, hfq, hfq.low), not round robin: priorities.
        "queue_order_strategy": "priority",
    }
    return {
        "broker_url": broker_url,
        "result_backend": settings.result_backend or broker_url,
        "broker_transport_options": transport,
        "result_backend_transport_options": {"visibility_timeout": settings.visibility_timeout},
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "broker_heartbeat": 0,
        "redis_socket_timeout": settings.redis_socket_timeout,
        "redis_socket_connect_timeout": settings.redis_socket_timeout,
        "redis_socket_keepalive": True,
        "redis_backend_health_check_interval": settings.redis_health_check_interval,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # A chunk killed at the hard time limit goes back to the queue (Celery's default acks it: the chunk
        # was never counted and its job never ended); the attempt counter bounds the retries.
        "task_acks_on_timeout": False,
        "worker_prefetch_multiplier": 1,
        # Keep a running chunk running through a broker outage: on Redis, cancelling it (Celery's future
        # default) acked its message over the new connection, so the chunk never ran again (measured in
        # tests/faults/test_redis_faults.py). Kept running, it writes its part and counts itself once Redis is
        # back; a copy delivered again later finds the part and is skipped.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "task_time_limit": settings.chunk_time_limit,
        "task_soft_time_limit": settings.chunk_soft_time_limit,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_ignore_result": True,
        "result_expires": 24 * 3600,
        "task_default_queue": settings.queue,
        "task_track_started": True,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "worker_hijack_root_logger": False,
        "enable_utc": True,
    }
