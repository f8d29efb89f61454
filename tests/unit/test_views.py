"""The status view hfq status, wait and run print."""

from __future__ import annotations

import pytest

from hfqueue.cli.views import status_json, status_text
from hfqueue.core.jobs import JobState, JobStatus

pytestmark = pytest.mark.timeout(30)


def status(**counts: int) -> JobStatus:
    return JobStatus(job_id="j", state=JobState.COMPLETED, task="feature-extraction", model="m", rows_total=10,
                     chunks_total=1, chunks_done=1, created_at=0.0, started_at=0.0, finished_at=1.0, output_dir="/o",
                     **counts)


def test_status_says_how_many_rows_were_truncated_only_when_some_were() -> None:
    # given a job of which 3 rows were cut to the model's limit, and one with none cut
    cut, whole = status(rows_done=10, rows_truncated=3), status(rows_done=10)

    # when their status is printed, then the first says so and the second says nothing of it
    assert "errors 0 rows · truncated 3 rows" in status_text(cut, {})
    assert "truncated" not in status_text(whole, {})
    # and the JSON view carries the count
    assert status_json(cut, {})["rows_truncated"] == 3


def test_status_says_how_many_rows_were_reused_only_when_some_were() -> None:
    # given a job of which 7 rows came from the result cache, and one with none reused
    reused, computed = status(rows_done=10, rows_reused=7), status(rows_done=10)
    # when their status is printed, then the first says so and the second says nothing of it
    assert "reused 7 rows" in status_text(reused, {})
    assert "reused" not in status_text(computed, {})
    assert status_json(reused, {})["rows_reused"] == 7
