"""The zero-setup default survives its own redis-server: killed, stopped by ``hfq down``, its port taken, the
machine restarted. Workers bring the embedded server back at the same address and jobs finish by themselves,
every row once.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from hfqueue import Client, Job, Settings
from hfqueue.state import embedded
from tests.api_server import start_api
from tests.conftest import WorkerProcess, settings_env
from tests.faults.conftest import assert_completes, fault_settings, running_chunk, serving_child, submit, wait_for
from tests.tiny_models import sentences

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def zero_setup(settings: Settings, tmp_path: Path) -> Iterator[Settings]:
    """Settings with no HFQ_BROKER_URL: everything runs on the embedded redis-server of a state folder of its own."""
    zero = fault_settings(settings, broker_url=None, state_dir=tmp_path / "state")
    yield zero
    embedded.stop_embedded(zero.state_dir)


@pytest.fixture
def start_worker(worker_factory: Callable[..., WorkerProcess], zero_setup: Settings
                 ) -> Iterator[Callable[[], WorkerProcess]]:
    """Start workers on the zero-setup settings; they stop when the test ends, before its server does."""
    started: list[WorkerProcess] = []

    def start() -> WorkerProcess:
        started.append(worker_factory(zero_setup))
        return started[-1]

    yield start
    for worker in started:
        worker.stop()


def server(state_dir: Path) -> dict[str, Any]:
    """The embedded server that serves now; fails when none does."""
    state = embedded.running(state_dir)
    assert state is not None, "no embedded redis-server serves"
    return state


def came_back(state_dir: Path, old: dict[str, Any], timeout: float = 30) -> dict[str, Any]:
    """Wait until a server other than ``old`` serves the state folder; return it."""
    found = wait_for(lambda: (s := embedded.running(state_dir)) is not None and s["pid"] != old["pid"] and s,
                     timeout, "the embedded redis-server to come back")
    assert isinstance(found, dict)
    return found


def hfq(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """Run an ``hfq`` command with these settings."""
    return subprocess.run([sys.executable, "-m", "hfqueue", *args], env=settings_env(settings), text=True,
                          capture_output=True, timeout=60, check=False)


def under_way(client: Client, start_worker: Callable[[], WorkerProcess], model: Path, rows: int
              ) -> tuple[WorkerProcess, Job]:
    """A worker, and a job of ``rows`` rows on ``model`` of which a chunk runs now."""
    worker = start_worker()
    job = submit(client, model, sentences(rows))
    wait_for(lambda: running_chunk(client, job.id) is not None, 60, "a chunk to start")
    return worker, job


def tracebacks(worker: WorkerProcess) -> int:
    return worker.log.read_text().count("Traceback")


def test_killed_server_comes_back_at_its_address_and_the_job_finishes(
        start_worker: Callable[[], WorkerProcess], zero_setup: Settings, fault_model: Path) -> None:
    # given a worker and a producer on the embedded server, a 6-chunk job under way
    with Client(zero_setup) as client:
        worker, job = under_way(client, start_worker, fault_model, 96)
        before = server(zero_setup.state_dir)

        # when the embedded redis-server is SIGKILLed (what an out-of-memory kill looks like)
        os.kill(before["pid"], signal.SIGKILL)

        # then the worker starts it again at the same address, and the job finishes by itself, every row once
        after = came_back(zero_setup.state_dir, before)
        assert after["url"] == before["url"] and after["restored"]
        assert_completes(job, 96, timeout=150)
    assert worker.proc.poll() is None, "the worker had to be restarted"
    log = worker.log.read_text()
    assert "the embedded redis-server is gone (crashed or killed)" in log and tracebacks(worker) <= 1, log[-3000:]


def test_small_job_in_flight_on_the_request_lane_survives_the_kill(
        start_worker: Callable[[], WorkerProcess], zero_setup: Settings, fault_model: Path) -> None:
    # given a worker, and a small job (it travels on the request lane) that the worker has taken
    with Client(zero_setup) as client:
        _, job = under_way(client, start_worker, fault_model, 12)
        before = server(zero_setup.state_dir)

        # when the server is killed while the entry is in flight
        os.kill(before["pid"], signal.SIGKILL)

        # then the job completes without anyone's help, each row once
        came_back(zero_setup.state_dir, before)
        assert_completes(job, 12, timeout=120)


def test_hfq_down_makes_workers_wait_quietly_until_a_command_starts_it(
        start_worker: Callable[[], WorkerProcess], zero_setup: Settings, fault_model: Path) -> None:
    # given a worker and a job under way on the embedded server
    with Client(zero_setup) as client:
        worker, job = under_way(client, start_worker, fault_model, 96)

        # when the operator stops the server with `hfq down`
        assert hfq(zero_setup, "down").returncode == 0
        waiting = "was stopped (hfq down); waiting for it to be started again"
        wait_for(lambda: waiting in worker.log.read_text(), 30, "the worker to say it waits")

        # then the worker does not start it again: it waits, saying so once, without a traceback per retry
        assert embedded.running(zero_setup.state_dir) is None
        # and when `hfq status` starts it again, the job goes on by itself to the end, every row once
        status = hfq(zero_setup, "status", job.id, "--once")
        assert status.returncode == 0, status.stderr
        assert_completes(job, 96, timeout=150)
    log = worker.log.read_text()
    assert log.count(waiting) == 1 and log.count("Cannot connect to") == 1 and tracebacks(worker) <= 1, log[-3000:]


def test_port_taken_while_down_is_logged_and_the_worker_reconnects_at_the_new_port(
        start_worker: Callable[[], WorkerProcess], zero_setup: Settings, fault_model: Path) -> None:
    # given a worker and a job under way, and the server stopped with `hfq down`
    with Client(zero_setup) as client:
        worker, job = under_way(client, start_worker, fault_model, 64)
    old = server(zero_setup.state_dir)
    assert hfq(zero_setup, "down").returncode == 0

    # when another program takes its port, then `hfq status` starts it on another port, saying what to do
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past the old connections' TIME_WAIT
        squatter.bind(("127.0.0.1", old["port"]))
        squatter.listen()
        started = hfq(zero_setup, "status", job.id, "--once")
        assert started.returncode == 0, started.stderr
        assert f"port {old['port']} of the embedded redis-server is taken by another program" in started.stderr
        assert "hfq worker, flower and api processes start again by themselves" in started.stderr
        new = server(zero_setup.state_dir)
        assert new["port"] != old["port"]

        # and the worker says why it starts again, reconnects at the new address (same process) and finishes the
        # job, every row once
        with Client(zero_setup) as client:
            assert_completes(client.job(job.id), 64, timeout=150)
    log = worker.log.read_text()
    assert f"came back at {new['url']}, another address (its old port was taken): this process starts again" in log
    assert worker.proc.poll() is None


def test_after_a_machine_restart_a_new_worker_finds_the_state_and_finishes_the_job(
        start_worker: Callable[[], WorkerProcess], zero_setup: Settings, fault_model: Path) -> None:
    # given a job under way on the embedded server, on the chunk queue (a killed worker's chunk would wait out the
    # visibility timeout there)
    with Client(zero_setup) as client:
        worker, job = under_way(client, start_worker, fault_model, 96)
    old = server(zero_setup.state_dir)

    # when the machine goes down: the worker, its serving child and the server are killed at once
    for pid in (serving_child(worker), worker.proc.pid, old["pid"]):
        os.kill(pid, signal.SIGKILL)
    worker.proc.wait(30)

    # then `hfq worker` started afterwards brings the server back at the same address from its append-only
    # file, and the job (its running chunk included) finishes without `hfq resume`
    start_worker()
    new = server(zero_setup.state_dir)
    assert new["url"] == old["url"] and new["restored"]
    with Client(zero_setup) as client:
        assert_completes(client.job(job.id), 96, timeout=150)


def test_hfq_api_alone_brings_the_killed_server_back(zero_setup: Settings, tmp_path: Path) -> None:
    # given `hfq api` on the embedded server, with no worker running
    api = start_api(zero_setup, tmp_path)
    try:
        before = server(zero_setup.state_dir)

        # when the server is SIGKILLed
        os.kill(before["pid"], signal.SIGKILL)

        # then the API process starts it again at the same address and its health check passes again
        after = came_back(zero_setup.state_dir, before)
        assert after["url"] == before["url"]
        wait_for(lambda: requests.get(f"{api.url}/health", timeout=5).status_code == 200, 30, "the API healthy")
        assert "the embedded redis-server is gone (crashed or killed)" in api.log.read_text()
    finally:
        api.stop()
