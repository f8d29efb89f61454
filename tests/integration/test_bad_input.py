"""Bad input fails at submit with a clear error and leaves nothing behind; failures that only the worker
can see end the job ``failed`` with the reason; nothing hangs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import datasets
import pytest

from hfqueue import (Client, InvalidSpecError, JobCancelledError, JobFailedError, JobState, SourceNotFoundError,
                     WaitTimeoutError)
from hfqueue.sinks.local import part_files
from tests.conftest import settings_env

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def dataset_dir(tmp_path: Path, texts: list[str]) -> Path:
    folder = tmp_path / "ds"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": texts[:10]})}).save_to_disk(folder)
    return folder


BAD_SPECS: list[tuple[str, dict[str, Any], type[Exception], str]] = [
    ("unknown task", {"task": "translate-everything"}, InvalidSpecError, "known tasks: "),
    ("missing column", {"column": "body"}, SourceNotFoundError, "column 'body' not in the dataset"),
    ("missing split", {"split": "test"}, SourceNotFoundError, "split 'test' not in"),
    ("missing dataset folder", {"dataset": "{tmp}/no/such/folder"}, SourceNotFoundError, "{tmp}/no/such/folder"),
    ("unreachable hub dataset", {"dataset": "nobody/no-such-dataset"}, SourceNotFoundError, "no-such-dataset"),
    ("missing data files", {"dataset": "{tmp}/no/such/*.jsonl"}, SourceNotFoundError, "no data files match"),
    ("missing model path", {"model": "{tmp}/no/such/model"}, SourceNotFoundError,
     "model path '{tmp}/no/such/model' does not exist"),
    # outside the input roots, existing or not, the error says only that: nothing about what exists there
    ("model outside the roots", {"model": "/no/such/model"}, InvalidSpecError,
     "model folder '/no/such/model' resolves to /no/such/model, outside the input roots"),
    ("data files outside the roots", {"dataset": "/etc/*.jsonl"}, InvalidSpecError,
     "data file '/etc/*.jsonl' resolves to /etc, outside the input roots"),
    ("dataset folder outside the roots", {"dataset": "/no/such/folder"}, InvalidSpecError,
     "dataset folder '/no/such/folder' resolves to /no/such/folder, outside the input roots"),
    ("zero chunk size", {"chunk_size": 0}, InvalidSpecError, "chunk_size: Input should be greater than 0"),
    ("output escapes the root", {"output_dir": "../escape"}, InvalidSpecError, "outside the output root"),
    ("absolute output elsewhere", {"output_dir": "/tmp/elsewhere"}, InvalidSpecError, "outside the output root"),
    ("unknown option", {"options": {"pooling": "maximum"}}, InvalidSpecError, "pooling"),
    ("inputs and dataset", {"inputs": ["a"]}, InvalidSpecError, "exactly one of `inputs`"),
]


@pytest.mark.parametrize(("case", "change", "error", "message"), BAD_SPECS, ids=[c[0] for c in BAD_SPECS])
def test_bad_spec_fails_at_submit_and_enqueues_nothing(idle_client: Client, encoder: Path, dataset_dir: Path,
                                                       case: str, change: dict[str, Any], error: type[Exception],
                                                       message: str, tmp_path: Path) -> None:
    # given a valid spec with one thing wrong ({tmp}: a folder inside the input roots)
    change = {k: v.replace("{tmp}", str(tmp_path)) if isinstance(v, str) else v for k, v in change.items()}
    message = message.replace("{tmp}", str(tmp_path))
    spec = {"task": "feature-extraction", "model": str(encoder), "dataset": str(dataset_dir), **change}
    jobs_before = idle_client.store.job_ids(10_000)

    # when it is submitted, then a clear error names the problem
    with pytest.raises(error, match=_literal(message)):
        idle_client.submit(**spec)

    # and nothing was enqueued, recorded or written
    assert idle_client.redis.llen(idle_client.settings.queue) == 0
    assert idle_client.store.job_ids(10_000) == jobs_before
    assert not (Path("/tmp/elsewhere").exists() or (idle_client.settings.output_root.parent / "escape").exists())


def test_model_that_fails_to_load_fails_the_job_with_the_reason(client: Client, tmp_path: Path) -> None:
    # given a model folder that exists but holds no model
    empty = tmp_path / "not-a-model"
    empty.mkdir()

    # when a job uses it
    job = client.submit(task="feature-extraction", model=str(empty), inputs=["one", "two"])

    # then waiting raises, and status and manifest say failed with the reason
    with pytest.raises(JobFailedError, match="cannot load model"):
        job.wait(timeout=60)
    status = job.status()
    assert status.state == JobState.FAILED and "cannot load model" in (status.error or "")
    manifest = json.loads((job.output_dir / "manifest.json").read_text())
    assert manifest["state"] == "failed" and "cannot load model" in manifest["error"]


def test_wait_with_a_timeout_raises_instead_of_hanging(idle_client: Client, encoder: Path) -> None:
    # given a job no worker will take
    job = idle_client.submit(task="feature-extraction", model=str(encoder), inputs=["x"])

    # when waiting for a second, then the wait raises and the job is still queued
    started = time.monotonic()
    with pytest.raises(WaitTimeoutError, match="still queued"):
        job.wait(timeout=1)
    assert time.monotonic() - started < 5
    assert job.status().state == JobState.QUEUED
    job.cancel()


def test_cancel_mid_job_stops_it_and_keeps_finished_parts(client: Client, encoder: Path, texts: list[str]) -> None:
    # given a job of 30 small chunks that has started
    job = client.submit(task="feature-extraction", model=str(encoder), inputs=texts[:60], chunk_size=2)
    deadline = time.monotonic() + 60
    while job.status().chunks_done < 1 and time.monotonic() < deadline:
        time.sleep(0.05)

    # when it is cancelled
    job.cancel()

    # then waiting says cancelled, no more parts appear, and the finished ones are readable
    with pytest.raises(JobCancelledError):
        job.wait(timeout=30)
    time.sleep(0.5)  # a chunk past its last batch check may still be renaming its part
    parts = part_files(job.output_dir)
    time.sleep(1.5)
    assert part_files(job.output_dir) == parts and 1 <= len(parts) < 30
    status = job.status()
    assert status.state == JobState.CANCELLED and status.rows_done < 60
    rows = datasets.load_dataset("parquet", data_files=[str(p) for p in parts], split="train")
    assert sorted(rows["row_idx"]) == sorted(set(rows["row_idx"]))


def test_hfq_reports_bad_input_with_exit_code_2(settings, encoder: Path) -> None:
    # given an unknown task, when `hfq submit` runs
    proc = subprocess.run([sys.executable, "-m", "hfqueue", "submit", "--task", "nope", "--model", str(encoder),
                           "--input", "x"], env=settings_env(settings), capture_output=True, text=True, timeout=60)

    # then it exits 2 and says what is wrong
    assert proc.returncode == 2
    assert "unknown task 'nope'" in proc.stderr


def _literal(text: str) -> str:
    import re

    return re.escape(text)
