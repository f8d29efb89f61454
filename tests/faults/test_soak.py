"""Soak: a worker runs hundreds of jobs in a row (chunk tasks and small jobs on the request lane), and its
serving process's memory levels off."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from hfqueue import Client, JobState, Settings
from tests.conftest import WorkerProcess
from tests.faults.conftest import assert_each_row_once, fault_settings, serving_child
from tests.tiny_models import sentences

pytestmark = pytest.mark.timeout(300)

ROUNDS, JOBS = 4, 40  # per round: 40 jobs of 2 chunks (Celery) and 40 one-chunk small jobs (request lane)


def rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` in MiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def test_memory_of_the_serving_process_levels_off_over_many_jobs(
        worker_factory: Callable[..., WorkerProcess], settings: Settings, encoder: Path) -> None:
    # given a worker
    settings = fault_settings(settings)
    worker = worker_factory(settings)
    rows = sentences(16)
    samples = []
    with Client(settings) as client:
        # when it runs four rounds of 80 jobs, memory sampled after each round
        for _ in range(ROUNDS):
            jobs = [client.submit(task="feature-extraction", model=str(encoder), inputs=rows[:n], chunk_size=8)
                    for _ in range(JOBS) for n in (16, 8)]
            statuses = [job.wait(timeout=120) for job in jobs]
            assert {s.state for s in statuses} == {JobState.COMPLETED}
            samples.append(rss_mib(serving_child(worker)))
        for status in statuses:
            assert_each_row_once(Path(status.output_dir), status.rows_total)

    # then after the first round (model load, warm-up) each round of 80 jobs adds less than 4 MiB
    growth = [round(b - a, 2) for a, b in zip(samples, samples[1:])]
    print(f"serving process RSS after each round of {2 * JOBS} jobs: {samples} MiB; growth {growth}")
    assert max(growth) < 4.0, (samples, growth)
