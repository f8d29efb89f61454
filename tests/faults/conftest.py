"""Fixtures for the fault tests: a misbehaving model, short timeouts, process handles, and the row ledger.

Every fault is injected for real: worker processes are SIGKILLed, SIGTERMed or frozen, redis-server
processes are restarted or flushed. Each test then checks the job's output folder against a ledger of
the rows it submitted: every row exactly once, in the results or in the error file.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from hfqueue import Client, Job, JobState, JobStatus, Settings
from hfqueue.sinks.local import error_files, part_files
from hfqueue.state.embedded import RedisServer
from tests.conftest import WorkerProcess, wait_for  # noqa: F401 - the fault tests import it from here
from tests.fault_models import build_fault_encoder

DELAY_S = 0.25  # per batch of the fault model: a 16-row chunk in batches of 4 runs for about a second


@pytest.fixture(scope="session")
def fault_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny encoder that sleeps per batch, raises on ``[UNK]`` and kills its process on ``[MASK]``."""
    return build_fault_encoder(tmp_path_factory.mktemp("fault_model") / "model", delay_s=DELAY_S)


def fault_settings(settings: Settings, **overrides: object) -> Settings:
    """``settings`` on a queue of its own, with timeouts short enough for a test to outwait them."""
    base = {"queue": f"faults-{time.monotonic_ns()}", "allow_remote_code": True, "max_batch_size": 4,
            "max_attempts": 2, "chunk_soft_time_limit": 20, "chunk_time_limit": 25, "visibility_timeout": 30}
    return settings.model_copy(update={**base, **overrides})


@pytest.fixture
def redis_of_its_own(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server (append-only file on) that this test may restart, flush or stop."""
    with RedisServer(tmp_path / "redis", appendonly=True) as server:
        yield server


def serving_child(worker: WorkerProcess, timeout: float = 30) -> int:
    """pid of the worker's prefork child (the process that runs models), once it exists."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            children = Path(f"/proc/{worker.proc.pid}/task/{worker.proc.pid}/children").read_text().split()
        except OSError:
            children = []
        if children:
            return int(children[0])
        time.sleep(0.05)
    raise AssertionError(f"worker {worker.proc.pid} has no serving child:\n{worker.log.read_text()[-2000:]}")


def kill(pid: int, sig: signal.Signals = signal.SIGKILL) -> None:
    """Send ``sig`` to ``pid`` if it still exists."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def submit(client: Client, model: Path, rows: list[str], chunk_size: int = 16) -> Job:
    """A feature-extraction job of ``rows`` on ``model`` (the fault model needs trust_remote_code)."""
    return client.submit(task="feature-extraction", model=str(model), inputs=rows, chunk_size=chunk_size,
                         trust_remote_code=True)


def running_chunk(client: Client, job_id: str) -> int | None:
    """Index of a chunk of the job that is running now, if any."""
    for index, info in client.store.chunk_states(job_id).items():
        if info.get("state") == "running":
            return index
    return None


def ledger(out_dir: Path) -> tuple[list[int], list[int]]:
    """Every ``row_idx`` in the job's result parts and in its error parts, duplicates kept, sorted."""
    def rows(files: list[Path]) -> list[int]:
        return sorted(i for f in files for i in pq.read_table(f, columns=["row_idx"]).column(0).to_pylist())

    return rows(part_files(out_dir)), rows(error_files(out_dir))


def assert_each_row_once(out_dir: Path, submitted: int, failed: set[int] = frozenset()) -> None:  # type: ignore[assignment]
    """The ledger check: rows ``0..submitted-1`` each appear exactly once, those in ``failed`` in the error file."""
    ok, errors = ledger(out_dir)
    assert len(ok) == len(set(ok)), f"rows duplicated in the results: {sorted({i for i in ok if ok.count(i) > 1})}"
    assert len(errors) == len(set(errors)), "rows duplicated in the error file"
    assert set(errors) == set(failed), f"error file holds {sorted(errors)}, expected {sorted(failed)}"
    assert not set(ok) & set(errors), f"rows both in results and errors: {sorted(set(ok) & set(errors))}"
    missing = set(range(submitted)) - set(ok) - set(errors)
    assert not missing, f"rows lost: {sorted(missing)}"
    assert len(ok) + len(errors) == submitted


def assert_completes(job: Job, rows: int, timeout: float = 120) -> JobStatus:
    """Wait for ``job``: it must end ``completed`` with all ``rows`` done, each exactly once on disk."""
    status = job.wait(timeout=timeout)
    assert status.state == JobState.COMPLETED and status.rows_done == rows, status
    assert_each_row_once(Path(status.output_dir), rows)
    return status
