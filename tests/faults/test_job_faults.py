"""Faults inside a job: a chunk delivered twice, a poison row, a cancel mid-job, and `resume` on jobs
that are healthy, finished, or lost with everything Redis held — every row once, or in the error file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from hfqueue import Client, JobState, Settings
from hfqueue.errors import JobCancelledError, JobNotFoundError
from hfqueue.sinks.local import part_files, read_manifest
from hfqueue.state.embedded import RedisServer
from tests.conftest import WorkerProcess, settings_env
from tests.fault_models import POISON, build_fault_encoder
from tests.faults.conftest import assert_each_row_once, fault_settings, ledger, running_chunk, submit, wait_for
from tests.integration.test_jobs import direct_embeddings
from tests.tiny_models import sentences

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def fault_worker_process(worker_factory: Callable[..., WorkerProcess], settings: Settings
                         ) -> Iterator[tuple[Settings, WorkerProcess]]:
    """A worker that may run the fault model, with the settings that reach it."""
    settings = fault_settings(settings)
    worker = worker_factory(settings)
    yield settings, worker
    worker.stop()


@pytest.fixture
def fault_worker(fault_worker_process: tuple[Settings, WorkerProcess]) -> Settings:
    """The settings that reach the fault worker."""
    return fault_worker_process[0]


def test_every_chunk_delivered_twice_gives_each_row_once(
        worker_factory: Callable[..., WorkerProcess], settings: Settings, fault_model: Path) -> None:
    # given a 4-chunk job whose every chunk message sits twice in the queue before any worker starts
    settings = fault_settings(settings)
    with Client(settings) as client:
        job = submit(client, fault_model, sentences(64))
        queued = client.redis.lrange(settings.queue, 0, -1)
        assert len(queued) == 4
        client.redis.rpush(settings.queue, *queued)

        # when a worker takes all eight deliveries
        worker_factory(settings)
        status = job.wait(timeout=120)
        wait_for(lambda: client.redis.llen(settings.queue) == 0, 60, "the second copies to be taken")

        # then the job counted each chunk once and the results hold each row once
        assert status.state == JobState.COMPLETED and (status.rows_done, status.chunks_done) == (64, 4)
    assert_each_row_once(Path(status.output_dir), 64)


def test_a_poison_row_lands_in_the_error_file_and_the_rest_of_its_batch_succeeds(
        fault_worker: Settings, fault_model: Path) -> None:
    # given a job with one row that makes the model raise every time
    rows = sentences(48)
    rows[21] = f"{rows[21]} {POISON}"
    with Client(fault_worker) as client:
        # when it runs
        status = submit(client, fault_model, rows).wait(timeout=120)

    # then that row alone is in the error file, with the model's reason, and every other row is in the results
    assert status.state == JobState.COMPLETED_WITH_ERRORS and (status.rows_done, status.rows_failed) == (47, 1)
    assert_each_row_once(Path(status.output_dir), 48, failed={21})
    errors = pq.read_table(Path(status.output_dir) / "errors" / "part-00001.parquet").to_pylist()
    assert errors == [{"row_idx": 21, "error_type": "ValueError", "error": "poison row: this model refuses [UNK]"}]


def test_cancel_mid_job_queued_chunks_never_run_and_the_running_one_stops(
        fault_worker: Settings, fault_model: Path) -> None:
    # given an 8-chunk job (about a second per chunk) whose second chunk is running
    with Client(fault_worker) as client:
        job = submit(client, fault_model, sentences(128))
        wait_for(lambda: job.status().chunks_done >= 1 and running_chunk(client, job.id) is not None, 60,
                 "the second chunk to start")

        # when it is cancelled
        job.cancel()
        with pytest.raises(JobCancelledError):
            job.wait(timeout=30)
        # (the worker still takes the job's queued messages, and drops each)
        wait_for(lambda: client.redis.llen(fault_worker.queue) == 0 and not client.redis.hlen("unacked"), 60,
                 "the queue to drain")

        # then chunks still queued at the cancel never started, no part appeared after it,
        # the finished parts are readable, and the record and the manifest count what is on disk
        attempts = {k for k in client.redis.hkeys(f"hfq:job:{job.id}:chunks") if k.startswith("attempts:")}
        assert 2 <= len(attempts) <= 3, attempts
        status = job.status()
        rows_on_disk, errors = ledger(job.output_dir)
        assert status.state == JobState.CANCELLED and status.rows_done == len(rows_on_disk) < 128 and not errors
        assert len(part_files(job.output_dir)) == status.chunks_done
        manifest = read_manifest(job.output_dir)
        assert (manifest["state"], manifest["rows_done"]) == ("cancelled", status.rows_done)
        assert len(rows_on_disk) == len(set(rows_on_disk))
        assert pa.concat_tables([pq.read_table(p) for p in part_files(job.output_dir)]).num_rows == status.rows_done


def test_resume_on_a_running_job_is_safe_and_on_a_finished_one_does_nothing(
        fault_worker: Settings, fault_model: Path) -> None:
    # given a 6-chunk job under way
    with Client(fault_worker) as client:
        job = submit(client, fault_model, sentences(96))
        wait_for(lambda: job.status().chunks_done >= 1, 60, "a chunk to finish")

        # when it is resumed while healthy (its unfinished chunks are sent a second time)
        client.resume(job.id)

        # then it completes with each row once
        status = job.wait(timeout=120)
        assert status.state == JobState.COMPLETED and status.rows_done == 96

        # and resuming it once finished sends nothing (the command line says so too)
        proc = subprocess.run([sys.executable, "-m", "hfqueue", "resume", job.id, "--json"],
                              env=settings_env(fault_worker), capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        assert (report["rebuilt"], report["chunks_enqueued"], report["state"]) == (False, 0, "completed")
    assert_each_row_once(Path(status.output_dir), 96)


def test_jobs_lost_before_they_ran_are_rebuilt_by_hfq_resume(
        worker_factory: Callable[..., WorkerProcess], settings: Settings, redis_of_its_own: RedisServer,
        encoder: Path, tmp_path: Path) -> None:
    # given a small inline job (request lane) and a 3-chunk data-file job, submitted while no worker runs
    settings = fault_settings(settings, broker_url=redis_of_its_own.url)
    data = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"text": sentences(40)}), data)
    with Client(settings) as client:
        small = client.submit(task="feature-extraction", model=str(encoder), inputs=sentences(10))
        files = client.submit(task="feature-extraction", model=str(encoder), dataset=str(data), chunk_size=16,
                              output_dir="from-files")
        folders = {small.id: small.output_dir, files.id: files.output_dir}

        # when Redis loses everything, a worker starts, and each job is resumed from the command line
        redis_of_its_own.flushall()
        worker_factory(settings)
        for job_id in folders:
            proc = subprocess.run([sys.executable, "-m", "hfqueue", "resume", job_id], env=settings_env(settings),
                                  capture_output=True, text=True, timeout=60)
            assert proc.returncode == 0, proc.stderr
            assert "rebuilt from its output folder" in proc.stdout

        # then both complete with each row once
        for job_id, rows in ((small.id, 10), (files.id, 40)):
            status = client.job(job_id).wait(timeout=90)
            assert status.state == JobState.COMPLETED and status.rows_done == rows
            assert_each_row_once(folders[job_id], rows)


def test_resume_of_a_job_nobody_knows_says_where_it_looked(idle_client: Client) -> None:
    # given a job id neither Redis nor any output folder knows, when it is resumed
    with pytest.raises(JobNotFoundError) as caught:
        idle_client.resume("20990101-000000-abcdef")

    # then the error says so and how to point at the folder, and nothing was written
    assert "is not in Redis" in str(caught.value) and "output_dir" in str(caught.value)
    assert "20990101-000000-abcdef" not in idle_client.store.job_ids()


def test_out_of_memory_batches_are_split_and_the_results_equal_a_run_without_the_fault(
        fault_worker_process: tuple[Settings, WorkerProcess], encoder: Path, tmp_path: Path) -> None:
    # given a model that runs out of memory on any batch larger than twice the longest of these rows
    rows = sentences(40)
    longest = max(len(t) for t in AutoTokenizer.from_pretrained(encoder)(rows)["input_ids"])
    model = build_fault_encoder(tmp_path / "oom", oom_tokens=2 * longest)

    # when a job runs with batches of 4 rows under a 1,024-token budget
    settings, worker = fault_worker_process
    with Client(settings) as client:
        status = submit(client, model, rows).wait(timeout=120)
        result = client.job(status.job_id).result()

    # then batches ran out of memory and were split, every row succeeded, equal to the same weights run one row at a time without the fault
    assert "out of memory on a batch of 4 rows" in worker.log.read_text()
    assert status.state == JobState.COMPLETED and status.rows_failed == 0
    np.testing.assert_allclose(np.array(result["embedding"]), direct_embeddings(encoder, rows), atol=1e-5)
    assert_each_row_once(Path(status.output_dir), 40)
