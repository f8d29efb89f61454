"""Jobs over a Hub dataset, served by a loopback Hub (tests/fake_hub.py).

The producer pins the commit the dataset's revision points at when a job is submitted: every chunk reads the rows
that were counted, even when the branch moves while the job waits, and the next job reads the new commit, also on
a worker that opened the old one. Jobs are submitted with ``hfq submit`` in a process of their own, because the
datasets library reads its Hub address once, at import.
"""

from __future__ import annotations

import io
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from huggingface_hub import HfApi

from hfqueue import Client, Settings
from tests.conftest import WorkerProcess, settings_env
from tests.fake_hub import FakeHub, use_fake_hub

pytestmark = pytest.mark.timeout(180)

REPO = "acme/rows"


def push(hub: FakeHub, rows: list[str], tmp: Path) -> str:
    """Commit ``rows`` as the dataset's one train file; the commit."""
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": rows}), buf)
    with pytest.MonkeyPatch.context() as patch, use_fake_hub(hub, patch, tmp / "uploader"):
        api = HfApi(endpoint=hub.url, token=hub.token)
        api.create_repo(REPO, repo_type="dataset", exist_ok=True)
        return api.upload_file(path_or_fileobj=buf.getvalue(), path_in_repo="data/train-00000.parquet",
                               repo_id=REPO, repo_type="dataset").oid


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with FakeHub() as fake:
        yield fake


def submit(settings: Settings, hub: FakeHub, home: Path, encoder: Path) -> str:
    """``hfq submit`` of a feature-extraction job over the dataset's train split, in chunks of 5; its job id."""
    done = subprocess.run(  # noqa: PLW1510 - the exit code is asserted, with stderr
        [sys.executable, "-m", "hfqueue", "submit", "--task", "feature-extraction", "--model", str(encoder),
         "--dataset", REPO, "--split", "train", "--chunk-size", "5"],
        env=settings_env(settings) | hub.env() | {"HF_HOME": str(home)}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()[-1]


def test_a_job_reads_the_commit_it_was_submitted_at(settings: Settings, hub: FakeHub, encoder: Path,
                                                    worker_factory: Callable[..., WorkerProcess],
                                                    tmp_path: Path) -> None:
    # given a dataset of 12 rows, and a job over it submitted while no worker serves its queue
    mine = settings.model_copy(update={"queue": f"hub-datasets-{time.monotonic_ns()}"})
    first_rows, next_rows = [f"first commit, row {i}" for i in range(12)], [f"next commit, row {i}" for i in range(20)]
    push(hub, first_rows, tmp_path)
    first = submit(mine, hub, tmp_path / "home", encoder)
    # when 20 other rows are pushed to its main branch before a worker takes the job
    push(hub, next_rows, tmp_path)
    worker = worker_factory(mine, env=hub.env() | {"HF_HOME": str(tmp_path / "home")})
    try:
        with Client(mine) as client:
            # then the job reads the 12 rows it counted, not the branch's new head
            assert client.job(first).result(timeout=120)["text"] == first_rows
            # and a job submitted now reads the new commit, on the worker that opened the old one
            assert client.job(submit(mine, hub, tmp_path / "home", encoder)).result(timeout=120)["text"] == next_rows
    finally:
        worker.stop()  # no worker of this test's queue lives on to answer later tests' pings
