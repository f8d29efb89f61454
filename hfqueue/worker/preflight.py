"""What a worker checks before it serves: Redis is there (it waits for it), Redis keeps what it is given,
and the worker can write where jobs write.

Relations between settings are checked when the settings are built (:mod:`hfqueue.core.config`); these checks
need the outside world. Each failure says what to change.
"""

from __future__ import annotations

import logging
import socket
import tempfile
import time

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from hfqueue.core.config import Settings
from hfqueue.errors import ConfigError
from hfqueue.state.redis_server import address

logger = logging.getLogger(__name__)

WAIT_LOG_EVERY = 10.0  # seconds between "still waiting for Redis" lines


def preflight(settings: Settings, url: str) -> None:
    """Wait until Redis answers, then check its configuration and the output root; :class:`ConfigError` if unfit."""
    where = address(url)
    client = redis.Redis.from_url(url, decode_responses=True, socket_timeout=5, socket_connect_timeout=2,
                                  retry=Retry(NoBackoff(), 0))  # one try per loop: the loop is the retry
    try:
        wait_for_redis(client, where)
        check_redis_config(client, settings, where)
    finally:
        client.close()
    check_output_root(settings)
    check_metrics_port(settings)


def wait_for_redis(client: redis.Redis, where: str) -> None:
    """Block until Redis answers PING: a worker started before Redis waits instead of failing."""
    started, last_log = time.monotonic(), float("-inf")
    while True:
        try:
            client.ping()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if time.monotonic() - last_log >= WAIT_LOG_EVERY:
                logger.warning("waiting for Redis at %s (%s); retrying every second", where, exc)
                last_log = time.monotonic()
            time.sleep(1.0)
            continue
        if time.monotonic() - started > 1:
            logger.info("Redis at %s answered after %.0f s", where, time.monotonic() - started)
        return


def check_redis_config(client: redis.Redis, settings: Settings, where: str) -> None:
    """Refuse a Redis that may drop queued chunks or close idle connections under the worker; warn when it
    keeps nothing across a restart."""
    try:
        config = client.config_get("*")
    except redis.ResponseError as exc:  # managed services often disable CONFIG
        logger.warning("cannot read the configuration of Redis at %s (%s): make sure it runs with "
                       "maxmemory-policy noeviction and persistence on", where, exc)
        return
    policy, maxmemory = config.get("maxmemory-policy", "noeviction"), int(config.get("maxmemory", 0) or 0)
    if policy != "noeviction" and maxmemory > 0:
        raise ConfigError(f"Redis at {where} evicts keys when it is full (maxmemory-policy {policy}): queued chunks "
                          "and job records would vanish without a trace. Run it with maxmemory-policy noeviction "
                          "(redis-server --maxmemory-policy noeviction, or CONFIG SET maxmemory-policy noeviction)",
                          value=policy)
    if policy != "noeviction":
        logger.warning("Redis at %s has maxmemory-policy %s: it would evict queued chunks once maxmemory is set; "
                       "use noeviction", where, policy)
    idle = int(config.get("timeout", 0) or 0)
    interval = settings.redis_health_check_interval
    if idle > 0 and (interval == 0 or interval >= idle):
        raise ConfigError(f"Redis at {where} closes connections idle for {idle} s, and HFQ_REDIS_HEALTH_CHECK_INTERVAL "
                          f"is {interval} s: a worker would find its connections dead after quiet spells. Set "
                          f"HFQ_REDIS_HEALTH_CHECK_INTERVAL below {idle}, or Redis' timeout to 0", value=idle)
    if config.get("appendonly", "yes") != "yes" and not config.get("save"):
        logger.warning("Redis at %s keeps nothing across a restart (appendonly no, no snapshots): queued chunks "
                       "would be lost and jobs need `hfq resume`; turn on appendonly", where)


def check_output_root(settings: Settings) -> None:
    """The worker must be able to create and write files under the output root."""
    root = settings.output_root.expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".hfq-write-check-"):
            pass
    except OSError as exc:
        raise ConfigError(f"this worker cannot write under HFQ_OUTPUT_ROOT ({root.resolve()}): {exc}. Point "
                          "HFQ_OUTPUT_ROOT at a folder the worker's user can write (a volume shared with the "
                          "producers)", value=str(root)) from None


def check_metrics_port(settings: Settings) -> None:
    """The metrics port must be free now: the serving process binds it as it starts."""
    if not settings.metrics_port:
        return
    family = socket.AF_INET6 if ":" in settings.metrics_address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the metrics server binds it
        try:
            probe.bind((settings.metrics_address, settings.metrics_port))
        except OSError as exc:
            raise ConfigError(f"cannot serve metrics on {settings.metrics_address}:{settings.metrics_port} ({exc}): "
                              "another worker on this host uses HFQ_METRICS_PORT already? Give each worker its own "
                              "port, or HFQ_METRICS_PORT=0 to serve none", value=settings.metrics_port) from None
