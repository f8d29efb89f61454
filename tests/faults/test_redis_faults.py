"""Redis restarts, loses everything, or is not there yet: workers and producers ride it out, and a job
Redis lost is rebuilt from its output folder by ``resume`` — every row once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hfqueue import Client, JobState, Settings
from hfqueue.sinks.local import part_files
from hfqueue.state.embedded import RedisServer
from tests.conftest import WorkerProcess
from tests.faults.conftest import (
    assert_completes,
    assert_each_row_once,
    fault_settings,
    running_chunk,
    submit,
    wait_for,
)
from tests.tiny_models import sentences

pytestmark = pytest.mark.timeout(180)


def on(server: RedisServer, settings: Settings, **overrides: object) -> Settings:
    return fault_settings(settings, broker_url=server.url, **overrides)


def test_redis_restarted_mid_job_workers_and_producers_reconnect(
        worker_factory: Callable[..., WorkerProcess], settings: Settings, redis_of_its_own: RedisServer,
        fault_model: Path) -> None:
    # given a worker and a producer on a Redis with its append-only file on, a 6-chunk job under way
    settings = on(redis_of_its_own, settings)
    worker_factory(settings)
    with Client(settings) as client:
        job = submit(client, fault_model, sentences(96))
        wait_for(lambda: running_chunk(client, job.id) is not None, 60, "a chunk to start")

        # when redis-server stops and starts again on the same port
        redis_of_its_own.restart()

        # then the same producer waits the job out and every row is in the results once
        assert_completes(job, 96, timeout=150)


def test_redis_flushed_mid_job_then_resume_sends_only_the_missing_chunks(
        worker_factory: Callable[..., WorkerProcess], settings: Settings, redis_of_its_own: RedisServer,
        fault_model: Path) -> None:
    # given a 6-chunk job with two chunks finished
    settings = on(redis_of_its_own, settings)
    worker_factory(settings)
    with Client(settings) as client:
        job = submit(client, fault_model, sentences(96))
        out = job.output_dir
        wait_for(lambda: job.status().chunks_done >= 2, 90, "two chunks to finish")

        # when Redis loses everything (its queue, the job record, the counters)
        redis_of_its_own.flushall()
        time.sleep(1.5)  # the chunk running at the flush stops at its next batch: the job is gone
        kept = {p.name: p.stat().st_mtime_ns for p in part_files(out)}
        assert 2 <= len(kept) < 6

        # and the job is resumed from its output folder
        resumed = client.resume(job.id)

        # then only the chunks without a part run, the parts already there are not rewritten,
        # and the results hold each row once
        status = resumed.wait(timeout=150)
        assert status.state == JobState.COMPLETED and status.rows_done == 96 and status.chunks_done == 6
        assert {p.name: p.stat().st_mtime_ns for p in part_files(out) if p.name in kept} == kept
        assert sum(int(v) for k, v in client.redis.hgetall(f"hfq:job:{job.id}:chunks").items()
                   if k.startswith("attempts:")) == 6 - len(kept)
    assert_each_row_once(out, 96)


def test_a_worker_started_before_redis_waits_then_serves(
        worker_factory: Callable[..., WorkerProcess], settings: Settings, tmp_path: Path, encoder: Path) -> None:
    # given a worker started while nothing listens on its Redis port
    server = RedisServer(tmp_path / "redis")
    settings = on(server, settings)
    worker = worker_factory(settings, ready=False)
    wait_for(lambda: f"waiting for Redis at 127.0.0.1:{server.port}" in worker.log.read_text(), 30,
             "the worker to say it waits for Redis")
    assert worker.proc.poll() is None, worker.log.read_text()[-2000:]

    # when Redis comes up
    with server:
        # then the worker connects and runs a job
        with Client(settings) as client:
            wait_for(lambda: client.workers(timeout=0.5), 60, "the worker to answer a ping")
            job = client.submit(task="feature-extraction", model=str(encoder), inputs=sentences(40), chunk_size=16)
            status = job.wait(timeout=90)
        assert status.state == JobState.COMPLETED
        worker.stop()
    assert_each_row_once(Path(status.output_dir), 40)
