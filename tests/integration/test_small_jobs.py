"""Small jobs on the request lane: they share forward passes with each other and with ``client.infer``,
and a lane entry is served at least once, with its results counted exactly once.

Real redis-server, real worker processes, tiny real models. Lane entries are staged by hand where a
test needs a precise situation (a consumer that died holding an entry, an entry delivered twice).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from hfqueue import Client, JobState, Settings
from hfqueue.state.keys import Keys
from hfqueue.state.lane import HEARTBEAT_TTL, SWEEP_EVERY
from tests.integration.test_jobs import direct_embeddings, direct_labels

pytestmark = pytest.mark.timeout(120)


def own_queue(settings: Settings) -> Settings:
    return settings.model_copy(update={"queue": f"lane-{time.monotonic_ns()}"})


def staged_entry(settings: Settings, **submit: object) -> tuple[str, str]:
    """Submit a small job on a queue no worker serves and take its lane entry back: (job id, raw entry)."""
    with Client(settings.model_copy(update={"queue": f"staging-{time.monotonic_ns()}"})) as c:
        job = c.submit(**submit)
        raw = c.redis.lpop(Keys.requests(c.settings.queue))
    assert raw is not None and json.loads(raw)["job"]["job_id"] == job.id
    return job.id, raw


def wait_until_drained(client: Client, timeout: float = 30) -> None:
    """Until the lane is empty and no consumer holds an entry: every entry has been answered and acked."""
    queue, r = client.settings.queue, client.redis
    deadline = time.monotonic() + timeout
    while r.llen(Keys.requests(queue)) or any(r.llen(k) for k in r.scan_iter(Keys.processing(queue, "*"))):
        assert time.monotonic() < deadline, "the lane was not drained in time"
        time.sleep(0.05)


def test_small_jobs_and_infer_requests_share_one_forward_pass(settings: Settings, worker_factory: Callable,
                                                              encoder: Path, texts: list[str]) -> None:
    # given six one-row jobs and one infer call for the same model, queued before any worker serves the queue
    own = own_queue(settings)
    with Client(own) as client:
        jobs = [client.submit(task="feature-extraction", model=str(encoder), inputs=[texts[i]]) for i in range(6)]
        answer: list[list[dict]] = []
        caller = threading.Thread(target=lambda: answer.append(
            client.infer("feature-extraction", [texts[6]], str(encoder), timeout=90)))
        caller.start()
        while client.redis.llen(Keys.requests(own.queue)) < 7:
            time.sleep(0.01)

        # when a worker starts on that queue
        worker_factory(own)
        for job in jobs:
            job.wait(timeout=60)
        caller.join(60)

        # then every job completed through the lane, all seven were gathered into one group, and each row
        # equals the model run on that row alone
        want = direct_embeddings(encoder, texts[:7])
        for i, job in enumerate(jobs):
            chunk = job.chunks()[0]
            assert job.status().state == JobState.COMPLETED and chunk["batched_with"] == 7
            assert np.allclose(job.result()["embedding"][0], want[i], atol=1e-5)
        assert np.allclose(answer[0][0]["embedding"], want[6], atol=1e-5)


def test_an_entry_held_by_a_dead_consumer_is_swept_back_and_run(client: Client, classifier: Path,
                                                                texts: list[str]) -> None:
    # given a small job whose lane entry sits on the processing list of a consumer with no heartbeat,
    # as if its process had been killed while holding it
    job_id, raw = staged_entry(client.settings, task="text-classification", model=str(classifier), inputs=texts[:3])
    r, queue = client.redis, client.settings.queue
    r.rpush(Keys.processing(queue, "dead-host:1"), raw)
    r.sadd(Keys.consumers(queue), "dead-host:1")

    # when the session's worker sweeps the lane
    job = client.job(job_id)
    job.wait(timeout=SWEEP_EVERY + HEARTBEAT_TTL + 30)

    # then the job ran once with the right labels, and the dead consumer holds nothing and is forgotten
    result = job.result()
    assert result["row_idx"] == [0, 1, 2] and result["label"] == direct_labels(classifier, texts[:3])
    assert r.llen(Keys.processing(queue, "dead-host:1")) == 0
    assert not r.sismember(Keys.consumers(queue), "dead-host:1")


def test_an_entry_delivered_twice_gives_each_row_once(client: Client, encoder: Path, texts: list[str]) -> None:
    # given the same small-job entry pushed onto the lane twice
    job_id, raw = staged_entry(client.settings, task="feature-extraction", model=str(encoder), inputs=texts[:4])
    client.redis.rpush(Keys.requests(client.settings.queue), raw, raw)

    # when the worker has served both copies
    job = client.job(job_id)
    status = job.wait(timeout=60)
    wait_until_drained(client)

    # then each row is in the results once and the job counted its one chunk once
    assert sorted(job.result()["row_idx"]) == [0, 1, 2, 3]
    assert status.chunks_done == 1 and job.status().rows_done == 4


def test_a_cancelled_small_job_is_not_run(client: Client, encoder: Path, texts: list[str]) -> None:
    # given a small job cancelled while its entry waits
    job_id, raw = staged_entry(client.settings, task="feature-extraction", model=str(encoder), inputs=texts[:2])
    job = client.job(job_id)
    job.cancel()

    # when the worker takes its entry
    client.redis.rpush(Keys.requests(client.settings.queue), raw)
    wait_until_drained(client)

    # then nothing ran: no part, no rows, still cancelled
    assert job.status().state == JobState.CANCELLED and job.status().rows_done == 0
    assert not list(job.output_dir.glob("part-*.parquet"))


def test_a_big_or_dataset_job_still_goes_through_the_chunk_queue(idle_client: Client, encoder: Path,
                                                                 texts: list[str]) -> None:
    # given the lane takes jobs of at most HFQ_SMALL_JOB_ROWS inline rows in one chunk
    lane = Keys.requests(idle_client.settings.queue)

    # when a one-chunk job of 8 rows, and a job of 60 rows in several chunks, are submitted
    idle_client.submit(task="feature-extraction", model=str(encoder), inputs=texts[:8])
    idle_client.submit(task="feature-extraction", model=str(encoder), inputs=texts[:60])

    # then only the small one is on the lane; the other's chunks are Celery messages on the queue
    assert idle_client.redis.llen(lane) == 1
    assert idle_client.redis.llen(idle_client.settings.queue) == 4
