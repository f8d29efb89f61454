"""Running many workers: one per GPU under `hfq worker --gpus`, health checks, and job priorities."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hfqueue import Client, Settings
from tests.conftest import WorkerProcess, settings_env
from tests.fault_models import build_fault_encoder
from tests.tiny_models import sentences

pytestmark = pytest.mark.timeout(180)


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def environ(pid: int) -> dict[str, str]:
    """The environment a running process was started with."""
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_one_worker_per_listed_gpu_each_pinned_and_restarted(settings: Settings, encoder: Path, tmp_path: Path) -> None:
    # given a CPU machine and a simulated device list of two GPUs
    mine = settings.model_copy(update={"queue": f"gpus-{time.monotonic_ns()}", "metrics_port": 0})
    log = tmp_path / "supervisor.log"
    with log.open("wb") as out:
        supervisor = subprocess.Popen([sys.executable, "-m", "hfqueue", "worker", "--gpus", "0,1", "--name", "box"],
                                      env=settings_env(mine), stdout=out, stderr=subprocess.STDOUT)
    try:
        with Client(mine) as client:
            # when it starts
            def live() -> dict[str, int]:
                return {w.name.split("@")[0]: w.pid for w in client.live_workers() if w.queue == mine.queue}

            serving = wait_until(lambda: len(live()) == 2 and live(), 90, "two workers")
            assert isinstance(serving, dict)

            # then there is one worker per entry, each seeing only its own GPU
            assert set(serving) == {"box-gpu0", "box-gpu1"}
            assert environ(serving["box-gpu0"])["CUDA_VISIBLE_DEVICES"] == "0"
            assert environ(serving["box-gpu1"])["CUDA_VISIBLE_DEVICES"] == "1"
            # and `hfq health --worker` on this host says it is healthy
            health = subprocess.run([sys.executable, "-m", "hfqueue", "health", "--worker"], env=settings_env(mine),
                                    capture_output=True, text=True, timeout=60)
            assert health.returncode == 0 and "box-gpu0" in health.stdout, health.stderr

            # when the worker of GPU 1 is killed outright
            killed = parent_of(serving["box-gpu1"])
            os.kill(killed, signal.SIGKILL)

            # then the supervisor starts it again, on the same GPU, and leaves GPU 0's alone
            again = wait_until(lambda: live().get("box-gpu1") not in (None, serving["box-gpu1"]) and live(), 90,
                               "GPU 1's worker back")
            assert isinstance(again, dict) and again["box-gpu0"] == serving["box-gpu0"]
            assert environ(again["box-gpu1"])["CUDA_VISIBLE_DEVICES"] == "1"
            assert not Path(f"/proc/{serving['box-gpu1']}").exists()  # its serving child went with it

            # and a job runs to completion on them
            job = client.submit(task="feature-extraction", model=str(encoder), inputs=sentences(40), chunk_size=8)
            assert job.wait(timeout=90).rows_done == 40
    finally:
        # when the supervisor is told to stop, its workers shut down warm and it exits 0
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(60) == 0, log.read_text()[-3000:]
    assert "exited with -9" in log.read_text()


def test_health_fails_without_redis_or_without_a_worker(settings: Settings) -> None:
    # given a Redis that answers but no worker on this host for a fresh queue name, and a Redis that does not
    env = settings_env(settings)
    unreachable = {**env, "HFQ_BROKER_URL": "redis://127.0.0.1:1/0"}

    # when `hfq health` is asked
    plain = subprocess.run([sys.executable, "-m", "hfqueue", "health"], env=env, capture_output=True, text=True,
                           timeout=60)
    dead = subprocess.run([sys.executable, "-m", "hfqueue", "health", "--timeout", "1"], env=unreachable,
                          capture_output=True, text=True, timeout=60)

    # then Redis alone is healthy, an unreachable one is not, and the reason is printed
    assert plain.returncode == 0 and "answers" in plain.stdout
    assert dead.returncode == 1 and "127.0.0.1:1 does not answer" in dead.stderr


def test_a_high_priority_job_overtakes_queued_low_priority_chunks(
        settings: Settings, worker_factory: Callable[..., WorkerProcess], tmp_path: Path) -> None:
    # given one worker busy with a low-priority job of many queued chunks on a slow model
    mine = settings.model_copy(update={"queue": f"prio-{time.monotonic_ns()}", "allow_remote_code": True,
                                       "max_batch_size": 4})
    model = build_fault_encoder(tmp_path / "slow", delay_s=0.1)
    worker_factory(mine)
    with Client(mine) as client:
        low = client.submit(task="feature-extraction", model=str(model), inputs=sentences(160), chunk_size=16,
                            trust_remote_code=True, priority="low")
        wait_until(lambda: low.status().rows_done > 0, 60, "the low job to start")

        # when a normal and then a high-priority job are submitted behind it
        normal = client.submit(task="feature-extraction", model=str(model), inputs=sentences(32, seed=1),
                               chunk_size=16, trust_remote_code=True)
        high = client.submit(task="feature-extraction", model=str(model), inputs=sentences(32, seed=2),
                             chunk_size=16, trust_remote_code=True, priority="high")
        low_at_submit = low.status().rows_done
        high.wait(timeout=120)
        low_at_high_end = low.status().rows_done
        normal.wait(timeout=120)
        low_at_normal_end = low.status().rows_done
        low.wait(timeout=120)

    # then the high job ran before the normal one, and no low chunk started before both had run: only the
    # low chunk running when they arrived finished meanwhile (round-robin polling would have run more)
    assert high.status().finished_at < normal.status().finished_at  # type: ignore[operator]
    assert low_at_normal_end - low_at_submit <= 16, (low_at_submit, low_at_high_end, low_at_normal_end)
