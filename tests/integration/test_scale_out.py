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
from hfqueue.state import presence
from hfqueue.state.routing import worker_queue
from tests.conftest import WorkerProcess, settings_env, wait_for
from tests.fault_models import build_fault_encoder
from tests.tiny_models import sentences

pytestmark = pytest.mark.timeout(180)


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

            serving = wait_for(lambda: len(live()) == 2 and live(), 90, "two workers")
            assert isinstance(serving, dict)

            # then there is one worker per entry, each seeing only its own GPU
            assert set(serving) == {"box-gpu0", "box-gpu1"}
            assert environ(serving["box-gpu0"])["CUDA_VISIBLE_DEVICES"] == "0"
            assert environ(serving["box-gpu1"])["CUDA_VISIBLE_DEVICES"] == "1"
            assert environ(serving["box-gpu0"])["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"  # indexes as nvidia-smi's
            # and `hfq health --worker` on this host says it is healthy
            health = subprocess.run([sys.executable, "-m", "hfqueue", "health", "--worker"], env=settings_env(mine),
                                    capture_output=True, text=True, timeout=60)
            assert health.returncode == 0 and "box-gpu0" in health.stdout, health.stderr

            # when the worker of GPU 1 is killed outright
            killed = parent_of(serving["box-gpu1"])
            os.kill(killed, signal.SIGKILL)

            # then the supervisor starts it again, on the same GPU, and leaves GPU 0's alone
            again = wait_for(lambda: live().get("box-gpu1") not in (None, serving["box-gpu1"]) and live(), 90,
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
        wait_for(lambda: low.status().rows_done > 0, 60, "the low job to start")

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


def chunk_workers(client: Client, job_id: str) -> list[str]:
    """The worker that ran each chunk of a job, in chunk order."""
    return [str(info.get("worker")) for _, info in sorted(client.job(job_id).chunks().items())]


def test_chunks_go_first_to_the_worker_that_holds_their_model(
        settings: Settings, worker_factory: Callable[..., WorkerProcess], tmp_path: Path) -> None:
    # given worker A holding model X and worker B holding model Y (B took Y while A was busy with X)
    mine = settings.model_copy(update={"queue": f"affinity-{time.monotonic_ns()}", "allow_remote_code": True,
                                       "small_job_rows": 0, "affinity_chunks": 3, "max_batch_size": 4})
    x = build_fault_encoder(tmp_path / "x", delay_s=0.2)
    y = build_fault_encoder(tmp_path / "y", delay_s=0.2)
    a = worker_factory(mine)
    with Client(mine) as client:
        def submit(model: Path, rows: int) -> str:
            job = client.submit(task="feature-extraction", model=str(model), inputs=sentences(rows), chunk_size=8,
                                trust_remote_code=True)
            return job.id

        def resident() -> dict[str, set[str]]:
            return {w.name: {m["model"] for m in w.models} for w in client.live_workers() if w.queue == mine.queue}

        client.job(submit(x, 8)).wait(timeout=60)
        wait_for(lambda: str(x) in set().union(*resident().values()), 30, "A's record naming X")
        b = worker_factory(mine)
        busy = submit(x, 24)  # three chunks, all to A's own queue: A is busy for a while
        client.job(submit(y, 8)).wait(timeout=60)  # so B, polling the shared queue, takes Y
        client.job(busy).wait(timeout=60)
        names = wait_for(lambda: sorted(map(sorted, resident().values())) == [[str(x)], [str(y)]] and resident(),
                           30, "one worker holding X, the other Y")
        assert isinstance(names, dict)
        holder_x = next(n for n, models in names.items() if models == {str(x)})
        holder_y = next(n for n, models in names.items() if models == {str(y)})

        # when a job on each model is submitted, three chunks each, both workers idle
        jx, jy = submit(x, 24), submit(y, 24)
        client.job(jx).wait(timeout=90)
        client.job(jy).wait(timeout=90)

        # then every chunk ran on the worker that held its model, and neither loaded the other's model
        assert chunk_workers(client, jx) == [holder_x] * 3
        assert chunk_workers(client, jy) == [holder_y] * 3
        assert resident() == {holder_x: {str(x)}, holder_y: {str(y)}}

        # and a model nobody holds is picked up, and a job larger than affinity spreads over both workers
        z = build_fault_encoder(tmp_path / "z", delay_s=0.05)
        assert client.job(submit(z, 16)).wait(timeout=90).rows_done == 16
        big = submit(x, 160)
        client.job(big).wait(timeout=120)
        ran = chunk_workers(client, big)
        assert ran[:3] == [holder_x] * 3 and set(ran) == {holder_x, holder_y}
    a.stop()
    b.stop()


def test_chunks_queued_for_a_worker_that_died_go_to_the_others(
        settings: Settings, worker_factory: Callable[..., WorkerProcess], tmp_path: Path) -> None:
    # given two workers, A holding model X
    mine = settings.model_copy(update={"queue": f"orphaned-{time.monotonic_ns()}", "small_job_rows": 0,
                                       "affinity_chunks": 2})
    x = build_fault_encoder(tmp_path / "x")  # no remote code: a plain tiny BERT with the fault model's weights
    x_config = (x / "config.json")
    x_config.write_text(x_config.read_text().replace('"fault-bert"', '"bert"').replace('"FaultModel"', '"BertModel"'))
    a = worker_factory(mine)
    with Client(mine) as client:
        client.submit(task="feature-extraction", model=str(x), inputs=sentences(8), chunk_size=8).wait(timeout=60)
        b = worker_factory(mine)
        holder = wait_for(lambda: next((w for w in client.live_workers() if w.queue == mine.queue and w.name == a.name
                                        and str(x) in {m["model"] for m in w.models}), None), 30,
                          "A's record naming X")
        assert isinstance(holder, presence.WorkerInfo)

        # when A is killed outright, and a job on X is submitted before its record expires
        os.kill(holder.pid, signal.SIGKILL)
        a.proc.kill()
        a.proc.wait()
        job = client.submit(task="feature-extraction", model=str(x), inputs=sentences(16), chunk_size=8)
        routed = client.redis.llen(worker_queue(mine.queue, "normal", holder.name))

        # then its chunks, sent to A's own queue, are moved to the shared queue once A's heartbeat stops, and B
        # runs them
        status = job.wait(timeout=90)
    assert routed == 2 and status.rows_done == 16
    assert set(chunk_workers(client, job.id)) == {b.name}
    b.stop()
