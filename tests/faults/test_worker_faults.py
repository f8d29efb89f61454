"""Worker processes die, are stopped or crash on a row: chunks are retried a bounded number of times,
and every submitted row ends up exactly once in the results or in the error file.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from hfqueue import Client, JobState, Settings
from hfqueue.errors import JobFailedError
from tests.conftest import WorkerProcess
from tests.fault_models import CRASH, build_fault_encoder
from tests.faults.conftest import (
    assert_completes,
    assert_each_row_once,
    fault_settings,
    kill,
    ledger,
    running_chunk,
    serving_child,
    submit,
    wait_for,
)
from tests.tiny_models import sentences

pytestmark = pytest.mark.timeout(180)


def test_sigkill_of_the_serving_process_mid_chunk_reruns_the_chunk(
        worker_factory: Callable[..., WorkerProcess], settings: Settings, fault_model: Path) -> None:
    # given a worker running a 4-chunk job, one chunk under way
    settings = fault_settings(settings)
    worker = worker_factory(settings)
    with Client(settings) as client:
        job = submit(client, fault_model, sentences(64))
        index = wait_for(lambda: running_chunk(client, job.id) is not None and job.status().rows_done == 0,
                         60, "a chunk to start")

        # when the process running it is SIGKILLed
        kill(serving_child(worker))

        # then Celery starts a new child, the chunk runs again, and every row is in the results once
        status = job.wait(timeout=120)
        assert status.state == JobState.COMPLETED and status.rows_done == 64
        assert max(int(v) for k, v in client.redis.hgetall(f"hfq:job:{job.id}:chunks").items()
                   if k.startswith("attempts:")) == 2
        assert index is not None
    assert_each_row_once(status_dir(status), 64)


def test_a_row_that_kills_the_process_every_time_fails_its_chunk_after_max_attempts(
        worker_factory: Callable[..., WorkerProcess], settings: Settings, fault_model: Path) -> None:
    # given a job whose chunk 1 holds a row that kills the serving process, on a worker allowing 2 attempts
    settings = fault_settings(settings, max_attempts=2)
    worker_factory(settings)
    rows = sentences(48)
    rows[20] = f"{rows[20]} {CRASH}"
    with Client(settings) as client:
        # when the job runs
        job = submit(client, fault_model, rows)
        status = job.wait(timeout=150)

        # then chunk 1 is marked failed with the reason after 2 attempts, and the other chunks finished
        assert status.state == JobState.COMPLETED_WITH_ERRORS
        assert (status.rows_done, status.rows_failed, status.chunks_failed) == (32, 16, 1)
        chunk = job.chunks()[1]
        assert chunk["state"] == "failed" and "gave up after 2 attempts" in chunk["error"]
        errors = job.errors()
        assert set(errors["error_type"]) == {"WorkerLost"}
    assert_each_row_once(status_dir(status), 48, failed=set(range(16, 32)))


def status_dir(status) -> Path:  # noqa: ANN001
    return Path(status.output_dir)


SHORT = {"chunk_soft_time_limit": 8, "chunk_time_limit": 10, "visibility_timeout": 12}


def test_whole_worker_killed_mid_job_and_another_started_finishes_the_job(
        worker_factory: Callable[..., WorkerProcess], settings: Settings, fault_model: Path) -> None:
    # given a worker running a 4-chunk job, one chunk under way
    settings = fault_settings(settings, **SHORT)
    first = worker_factory(settings)
    with Client(settings) as client:
        job = submit(client, fault_model, sentences(64))
        wait_for(lambda: running_chunk(client, job.id) is not None, 60, "a chunk to start")

        # when the whole worker (main process and serving child) is SIGKILLed, and another worker starts
        kill(serving_child(first))
        kill(first.proc.pid)
        first.proc.wait()
        worker_factory(settings)

        # then the chunk the dead worker held comes back (after the visibility timeout) and the job finishes
        assert_completes(job, 64)


def test_sigterm_mid_chunk_finishes_the_chunk_before_the_worker_exits(
        worker_factory: Callable[..., WorkerProcess], settings: Settings, fault_model: Path) -> None:
    # given a worker running a 4-chunk job, one chunk under way
    settings = fault_settings(settings)
    first = worker_factory(settings)
    with Client(settings) as client:
        job = submit(client, fault_model, sentences(64))
        index = wait_for(lambda: running_chunk(client, job.id), 60, "a chunk to start")
        done_before = job.status().chunks_done

        # when the worker gets SIGTERM (warm shutdown)
        kill(first.proc.pid, signal.SIGTERM)
        first.proc.wait(60)

        # then the running chunk was finished and counted before the worker exited, no other chunk started
        chunk_states = job.chunks()
        assert chunk_states[index]["state"] == "done", chunk_states
        assert job.status().chunks_done == done_before + 1
        # and a new worker runs the rest
        worker_factory(settings)
        status = job.wait(timeout=120)
        assert status.state == JobState.COMPLETED
    assert_each_row_once(Path(status.output_dir), 64)


def test_a_frozen_worker_whose_chunk_outlives_the_visibility_timeout_duplicates_nothing(
        worker_factory: Callable[..., WorkerProcess], settings: Settings, fault_model: Path) -> None:
    # given two workers; the one running a chunk is frozen (SIGSTOP) mid-chunk
    settings = fault_settings(settings, **SHORT)
    first = worker_factory(settings)
    with Client(settings) as client:
        job = submit(client, fault_model, sentences(64))
        index = wait_for(lambda: running_chunk(client, job.id), 60, "a chunk to start")
        child = serving_child(first)
        kill(child, signal.SIGSTOP)
        kill(first.proc.pid, signal.SIGSTOP)
        try:
            worker_factory(settings)
            # when the visibility timeout passes, Redis hands the frozen chunk to the second worker
            wait_for(lambda: int(client.redis.hget(f"hfq:job:{job.id}:chunks", f"attempts:{index}") or 0) >= 2,
                     90, "the frozen chunk to be delivered again")
        finally:
            # and then the frozen worker wakes up and carries on
            kill(first.proc.pid, signal.SIGCONT)
            kill(child, signal.SIGCONT)

        # then the job ends and each row is in the results or the error file exactly once: the copy that
        # writes first wins (the woken worker's hard time limit sends its copy back once more, which may give
        # the chunk up after HFQ_MAX_ATTEMPTS while the second copy runs)
        status = job.wait(timeout=120)
        assert status.state in (JobState.COMPLETED, JobState.COMPLETED_WITH_ERRORS)
        errors = set(ledger(Path(status.output_dir))[1])
        # (on failure, each chunk's state, attempts, worker and error say which copy gave up, and why)
        assert errors in (set(), set(range(index * 16, index * 16 + 16))), (index, job.chunks())
        assert_each_row_once(Path(status.output_dir), 64, failed=errors)


def test_a_worker_started_later_gets_queued_long_chunks_instead_of_waiting_behind_a_busy_one(
        worker_factory: Callable[..., WorkerProcess], settings: Settings, fault_model: Path) -> None:
    # given a job of four long chunks (8 batches each) queued before any worker runs, and one worker started
    settings = fault_settings(settings)
    with Client(settings) as client:
        job = submit(client, fault_model, sentences(128), chunk_size=32)
        worker_factory(settings)

        # when a second worker starts while the first is busy
        worker_factory(settings)
        status = job.wait(timeout=120)

        # then the second one ran chunks too: the first had taken only the chunk it runs (prefetch 1)
        assert status.state == JobState.COMPLETED
        assert len({info["worker"] for info in job.chunks().values()}) == 2, job.chunks()
    assert_each_row_once(Path(status.output_dir), 128)


def test_chunks_past_their_time_limits_fail_with_the_reason_and_the_jobs_end(
        worker_factory: Callable[..., WorkerProcess], settings: Settings, tmp_path: Path) -> None:
    # given a worker with a 6 s soft and 8 s hard chunk time limit, allowing 2 attempts
    settings = fault_settings(settings, chunk_soft_time_limit=6, chunk_time_limit=8, visibility_timeout=10,
                              max_attempts=2)
    worker_factory(settings)
    slow = build_fault_encoder(tmp_path / "slow", delay_s=1.0)  # 20 batches of 1 s: past the soft limit
    stuck = build_fault_encoder(tmp_path / "stuck", hang_s=60)  # ignores the soft limit: only the hard one ends it
    with Client(settings) as client:
        # when a one-chunk job of 80 rows (more than HFQ_SMALL_JOB_ROWS: a Celery chunk task) runs on each
        slow_job = submit(client, slow, sentences(80), chunk_size=80)
        stuck_job = submit(client, stuck, sentences(80), chunk_size=80)

        # then the slow chunk stops at its soft limit and fails with the reason
        with pytest.raises(JobFailedError) as failed:
            slow_job.wait(timeout=60)
        status = failed.value.status
        assert (status.state, status.rows_failed) == (JobState.FAILED, 80)
        assert "ran past HFQ_CHUNK_SOFT_TIME_LIMIT (6 s)" in status.error
        # and the stuck one is killed at its hard limit, tried again, then failed: the job ends
        with pytest.raises(JobFailedError) as failed:
            stuck_job.wait(timeout=120)
        status = failed.value.status
        assert (status.state, status.rows_failed) == (JobState.FAILED, 80)
        assert "gave up after 2 attempts" in status.error and "HFQ_CHUNK_TIME_LIMIT" in status.error
    assert_each_row_once(Path(status.output_dir), 80, failed=set(range(80)))
