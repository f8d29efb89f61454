"""A job's and an OpenAI batch's state machine against a real redis-server: which moves happen, which are refused,
what the manifest and the hooks see after each."""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import redis

from hfqueue.client import Client
from hfqueue.core.config import Settings
from hfqueue.core.hooks import Hooks
from hfqueue.core.jobs import JobState
from hfqueue.errors import JobFailedError
from hfqueue.lifecycle import batches, manifest
from hfqueue.lifecycle import jobs as lifecycle
from hfqueue.lifecycle.batches import BatchState
from hfqueue.sinks.local import read_manifest
from hfqueue.state.batches import BatchStore
from hfqueue.state.embedded import RedisServer
from hfqueue.state.store import JobStore

pytestmark = pytest.mark.timeout(30)


class Ended(Hooks):
    """Records every job_ended call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def job_ended(self, job_id: str, record: Mapping[str, str]) -> None:
        self.calls.append((job_id, record["state"]))


@pytest.fixture
def store(redis_server: RedisServer) -> Iterator[JobStore]:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield JobStore(client, ttl=600)
    client.close()


def new_job(store: JobStore, tmp_path: Path, chunks: int = 2, output: str | None = None) -> str:
    """A queued job of ``chunks`` chunks of 2 rows, its manifest written."""
    job_id = f"job-{secrets.token_hex(4)}"
    plan = [{"index": i, "start": 2 * i, "end": 2 * i + 2} for i in range(chunks)]
    store.create(job_id, {"spec": {"task": "feature-extraction", "model": "m", "output": output},
                          "source": {"kind": "inline"}, "rows_total": 2 * chunks, "chunks_total": chunks,
                          "chunks": plan, "output_dir": str(tmp_path / job_id)})
    (tmp_path / job_id).mkdir()
    lifecycle.submitted(store, job_id)
    return job_id


def count(store: JobStore, job_id: str, index: int, settings: Settings, hooks: Hooks, ok: int = 2, failed: int = 0
          ) -> int:
    return lifecycle.count_chunk(store, job_id, index, settings, hooks, rows_ok=ok, rows_failed=failed,
                                 info={"state": "done"})


def manifest_state(tmp_path: Path, job_id: str) -> str:
    return read_manifest(tmp_path / job_id)["state"]


def test_a_job_runs_to_completed_and_the_hooks_hear_it_once(store: JobStore, settings: Settings,
                                                             tmp_path: Path) -> None:
    # given a queued job of two chunks
    job_id, hooks = new_job(store, tmp_path), Ended()
    assert manifest_state(tmp_path, job_id) == "queued"
    # when a worker starts it and counts both chunks, the second twice (a re-delivery)
    lifecycle.start(store, job_id)
    assert store.state(job_id) == JobState.RUNNING
    assert count(store, job_id, 0, settings, hooks) == 1
    assert count(store, job_id, 1, settings, hooks) == 2
    assert count(store, job_id, 1, settings, hooks) == -1
    # then it completed once, with its rows counted once, and the manifest and the hooks agree
    status = store.status(job_id)
    assert (status.state, status.rows_done, status.chunks_done) == (JobState.COMPLETED, 4, 2)
    assert manifest_state(tmp_path, job_id) == "completed"
    assert hooks.calls == [(job_id, "completed")]


def test_failed_rows_decide_the_final_state(store: JobStore, settings: Settings, tmp_path: Path) -> None:
    # given two jobs: one with a failed row, one whose every row failed
    some, every, hooks = new_job(store, tmp_path), new_job(store, tmp_path, chunks=1), Ended()
    # when their chunks are counted
    count(store, some, 0, settings, hooks)
    count(store, some, 1, settings, hooks, ok=1, failed=1)
    count(store, every, 0, settings, hooks, ok=0, failed=2)
    # then the first completed with errors and the second failed, each saying why
    assert store.status(some).state == JobState.COMPLETED_WITH_ERRORS
    assert "1 of 4 rows failed" in (store.status(some).error or "")
    assert store.status(every).state == JobState.FAILED
    assert store.status(every).error == "every row failed"
    assert sorted(hooks.calls) == sorted([(some, "completed_with_errors"), (every, "failed")])


def test_a_cancelled_job_stays_cancelled_and_a_late_chunk_is_still_counted(store: JobStore, settings: Settings,
                                                                          tmp_path: Path) -> None:
    # given a running job that a user cancels
    job_id, hooks = new_job(store, tmp_path), Ended()
    lifecycle.start(store, job_id)
    assert lifecycle.cancel(store, job_id, hooks)
    # when a chunk that outran the cancel is counted, and the job is cancelled or failed again
    count(store, job_id, 0, settings, hooks)
    again = lifecycle.cancel(store, job_id, hooks)
    failed = lifecycle.fail(store, job_id, "boom", hooks)
    # then nothing moves it back, the manifest counts the late rows, and the hooks heard one end
    assert (again, failed) == (False, False)
    assert store.state(job_id) == JobState.CANCELLED
    manifest = read_manifest(tmp_path / job_id)
    assert (manifest["state"], manifest["rows_done"], manifest["error"]) == ("cancelled", 2, "cancelled by user")
    assert hooks.calls == [(job_id, "cancelled")]


def test_reopen_runs_a_failed_job_on_and_refuses_other_states(store: JobStore, tmp_path: Path) -> None:
    # given a failed job and a queued one
    failed, queued, hooks = new_job(store, tmp_path), new_job(store, tmp_path), Ended()
    lifecycle.fail(store, failed, "the model did not load", hooks)
    # when both are reopened as a resume would
    reopened = lifecycle.reopen(store, failed, JobState.FAILED, chunks_left=True)
    not_failed = lifecycle.reopen(store, queued, JobState.FAILED, chunks_left=True)
    # then the failed one is queued again with its error and end time cleared; the other did not move
    assert (reopened, not_failed) == (True, False)
    status = store.status(failed)
    assert (status.state, status.error, status.finished_at) == (JobState.QUEUED, None, None)


def test_a_job_whose_publishing_fails_ends_failed_saying_where_its_results_are(
        store: JobStore, settings: Settings, tmp_path: Path) -> None:
    # given a job whose output is a local folder outside the output root (publishing refuses it)
    job_id, hooks = new_job(store, tmp_path, chunks=1, output=str(tmp_path / "elsewhere")), Ended()
    # when its last chunk is counted
    count(store, job_id, 0, settings, hooks)
    # then it went through finalizing to failed, naming the folder with the results and how to retry
    status = store.status(job_id)
    assert status.state == JobState.FAILED
    assert str(tmp_path / job_id) in (status.error or "") and f"hfq resume {job_id}" in (status.error or "")
    assert hooks.calls == [(job_id, "failed")]


def test_wait_returns_once_the_manifest_records_the_final_state(store: JobStore, settings: Settings, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # given a queued job, and a manifest that takes a while to write (a slow or remote disk)
    job_id = new_job(store, tmp_path)
    write = manifest.write

    def slow(store: JobStore, job_id: str) -> dict[str, object]:
        time.sleep(0.5)
        return write(store, job_id)

    monkeypatch.setattr(manifest, "write", slow)
    with Client(settings) as client:
        # when the job fails in another thread while a caller waits on it, reading its status often
        failing = threading.Thread(target=lifecycle.fail, args=(store, job_id, "the model did not load", Hooks()))
        failing.start()
        with pytest.raises(JobFailedError):
            client.job(job_id).wait(timeout=10, poll_interval=0.02)
        # then, when wait returns, the job's manifest already says how it ended
        assert read_manifest(tmp_path / job_id)["state"] == "failed"
        failing.join()


def test_a_batch_moves_through_its_states_and_refuses_the_rest(store: JobStore, redis_server: RedisServer) -> None:
    # given a batch record in validating
    r = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        records, batch_id = BatchStore(r, ttl=600), f"batch_{secrets.token_hex(4)}"
        records.create(batch_id, {"state": "validating", "created_at": 1.0})
        # when its jobs are sent, it finalizes, and it ends; then something tries to cancel or fail it
        assert batches.sent(records, batch_id, ["j1", "j2"])
        assert batches.finalizing(records, batch_id)
        final = batches.finished(records, batch_id, cancelled=False, completed=3, failed=1)
        late_cancel, late_fail = batches.cancel(records, batch_id), batches.fail(records, batch_id)
        # then it completed with its counts and jobs recorded, and the late moves were refused
        assert final == BatchState.COMPLETED and batches.state_of(records, batch_id) == BatchState.COMPLETED
        rec = records.get(batch_id)
        assert (json.loads(rec["jobs"]), rec["completed_requests"], rec["failed_requests"]) == (["j1", "j2"], "3", "1")
        assert rec["completed_at"] and (late_cancel, late_fail) == (False, False)
    finally:
        r.close()


def test_a_batch_cancelled_while_validating_records_its_jobs_anyway(redis_server: RedisServer) -> None:
    # given a batch cancelled while its jobs were being sent
    r = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        records, batch_id = BatchStore(r, ttl=600), f"batch_{secrets.token_hex(4)}"
        records.create(batch_id, {"state": "validating", "created_at": 1.0})
        assert batches.cancel(records, batch_id)
        # when the sender reports its jobs sent
        moved = batches.sent(records, batch_id, ["j1"])
        # then the batch stays cancelling, its jobs recorded (so they can be cancelled), and ends cancelled
        assert not moved and batches.state_of(records, batch_id) == BatchState.CANCELLING
        assert json.loads(records.get(batch_id)["jobs"]) == ["j1"]
        assert batches.finished(records, batch_id, cancelled=True, completed=0, failed=1) == BatchState.CANCELLED
    finally:
        r.close()
