"""The connections both ends share: the broker URL, Redis clients, and the Celery app with its task names.

Producers send with it and workers consume with it, so neither imports the other.
"""

from __future__ import annotations

import redis
from celery import Celery
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from hfqueue.core.config import Settings, celery_config
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
