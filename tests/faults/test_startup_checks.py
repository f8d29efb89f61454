"""A worker checks, before it serves, what would otherwise fail hours later: settings whose relation
matters, a Redis that evicts keys or drops idle connections, an output root it cannot write.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hfqueue import Settings
from hfqueue.state.broker import redis_client
from hfqueue.state.embedded import RedisServer
from tests.conftest import settings_env

pytestmark = pytest.mark.timeout(90)


def start_worker(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hfqueue", "worker"], env=env, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize(("variable", "value", "says"), [
    ("HFQ_VISIBILITY_TIMEOUT", "100", "HFQ_VISIBILITY_TIMEOUT (100 s) must exceed HFQ_CHUNK_TIME_LIMIT (3600 s)"),
    ("HFQ_CHUNK_SOFT_TIME_LIMIT", "4000", "HFQ_CHUNK_SOFT_TIME_LIMIT (4000 s) must be below HFQ_CHUNK_TIME_LIMIT"),
    ("HFQ_JOB_TTL", "3600", "HFQ_JOB_TTL (3600 s) must exceed HFQ_VISIBILITY_TIMEOUT (7200 s)"),
])
def test_settings_whose_relation_is_wrong_stop_the_worker_with_what_to_change(
        settings: Settings, variable: str, value: str, says: str) -> None:
    # given settings where one value contradicts another, when a worker starts
    env = settings_env(Settings(broker_url=settings.broker_url, output_root=settings.output_root))
    proc = start_worker({**env, variable: value})

    # then it exits 2 before serving, naming both settings
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert says in proc.stderr


def test_a_redis_that_evicts_keys_is_refused(settings: Settings, tmp_path: Path) -> None:
    # given a Redis with a memory limit and an eviction policy
    with RedisServer(tmp_path / "redis") as server:
        redis_client(server.url, settings).config_set("maxmemory-policy", "allkeys-lru")
        redis_client(server.url, settings).config_set("maxmemory", "100mb")

        # when a worker starts against it
        proc = start_worker(settings_env(settings.model_copy(update={"broker_url": server.url})))

    # then it exits 2 saying to use noeviction
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "maxmemory-policy allkeys-lru" in proc.stderr and "noeviction" in proc.stderr


def test_a_redis_that_closes_idle_connections_sooner_than_the_health_checks_is_refused(
        settings: Settings, tmp_path: Path) -> None:
    # given a Redis that drops connections idle for 10 s, and health checks every 25 s
    with RedisServer(tmp_path / "redis") as server:
        redis_client(server.url, settings).config_set("timeout", "10")
        proc = start_worker(settings_env(settings.model_copy(update={"broker_url": server.url,
                                                                      "redis_health_check_interval": 25})))

    # then the worker refuses to start and names the setting to lower
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "HFQ_REDIS_HEALTH_CHECK_INTERVAL below 10" in proc.stderr


def test_an_output_root_the_worker_cannot_write_is_refused(settings: Settings, tmp_path: Path) -> None:
    # given an output root that is a file, not a folder
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")

    # when a worker starts
    proc = start_worker(settings_env(settings.model_copy(update={"output_root": blocker / "results"})))

    # then it exits 2 naming HFQ_OUTPUT_ROOT
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "cannot write under HFQ_OUTPUT_ROOT" in proc.stderr


def test_a_taken_metrics_port_is_refused(settings: Settings) -> None:
    # given a port some other process listens on
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        # when a worker is told to serve its metrics there
        proc = start_worker(settings_env(settings.model_copy(update={"metrics_port": port,
                                                                     "metrics_address": "127.0.0.1"})))

    # then it exits 2 before serving, saying how to choose
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"cannot serve metrics on 127.0.0.1:{port}" in proc.stderr and "HFQ_METRICS_PORT=0" in proc.stderr
