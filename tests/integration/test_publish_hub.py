"""Publishing results to a Hub dataset repo, against a loopback server playing the Hub (tests/fake_hub.py).

A worker of its own runs with the fake's endpoint and token in its environment (as a deployment sets
HF_TOKEN), tiny shards and two files a commit, so a small job makes several shards and commits.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from hfqueue import Client, JobState, Settings
from tests.conftest import WorkerProcess, settings_env
from tests.fake_hub import FakeHub

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def hub() -> Iterator[FakeHub]:
    with FakeHub() as fake:
        yield fake


@pytest.fixture(scope="module")
def hub_settings(settings: Settings) -> Settings:
    # One chunk part per shard (a byte is below any part's size), two shards per commit.
    return settings.model_copy(update={"queue": f"hub-{time.monotonic_ns()}", "hub_shard_mb": 0.000001,
                                       "hub_commit_files": 2})


@pytest.fixture(scope="module")
def hub_worker(worker_factory: Callable[..., WorkerProcess], hub_settings: Settings, hub: FakeHub) -> WorkerProcess:
    return worker_factory(hub_settings, env=hub.env())


@pytest.fixture
def client(hub_settings: Settings, hub_worker: WorkerProcess) -> Iterator[Client]:
    with Client(hub_settings) as c:
        yield c


def shard_table(files: dict[str, bytes], folder: str = "data") -> list[dict]:
    """The rows of the repo's shards in ``folder``, in shard order."""
    names = sorted(p for p in files if p.startswith(f"{folder}/") and p.endswith(".parquet"))
    return [row for name in names for row in pq.read_table(io.BytesIO(files[name])).to_pylist()]


def test_results_arrive_as_shards_and_a_card_in_a_private_repo(client: Client, hub: FakeHub, encoder: Path,
                                                               texts: list[str]) -> None:
    # given a 50-row job in 5 chunks whose output is a new Hub dataset repo
    job = client.submit(task="feature-extraction", model=str(encoder), inputs=texts[:50], chunk_size=10,
                        output="hub://acme/embeddings-1")

    # when it finishes
    status = job.wait(timeout=90)

    # then the repo is private and holds five shards in the viewer's layout, the card, and the job's rows
    assert status.state == JobState.COMPLETED
    files = hub.files("acme/embeddings-1")
    assert hub.is_private("acme/embeddings-1")
    assert sorted(p for p in files if p.startswith("data/")) == [f"data/train-{i:05d}-of-00005.parquet"
                                                                 for i in range(5)]
    rows = shard_table(files)
    assert [r["row_idx"] for r in rows] == list(range(50))
    assert [r["embedding"] for r in rows] == job.result()["embedding"]
    _, header, body = files["README.md"].decode().split("---", 2)
    assert yaml.safe_load(header)["configs"] == [{"config_name": "default",
                                                  "data_files": [{"split": "train", "path": "data/train-*"}]}]
    assert "feature-extraction" in body and str(encoder) in body and "50 in, 50 results, 0 errors" in body
    # and the card says what the job took from the model (a plain encoder: mean pooling, unnormalized)
    assert '| resolved from the model | `{"dimensions": null, "dtype": "float32", "engine": "torch", "max_length": 512, ' \
           '"modules": null, "normalize": false, "pooling": "mean", "prompt": null, "truncate": true}` |' in body
    # few commits for many files: 3 of shards (2 + 2 + 1) and one for the card
    assert len(hub.commits("acme/embeddings-1")) == 4
    assert json.loads((job.output_dir / "manifest.json").read_text())["published"]["sent"] == 5


def test_the_token_never_leaves_the_workers_environment(client: Client, hub: FakeHub, hub_worker: WorkerProcess,
                                                        encoder: Path, texts: list[str]) -> None:
    # given a job published with the token from the worker's HF_TOKEN
    job = client.submit(task="feature-extraction", model=str(encoder), inputs=texts[:12], chunk_size=6,
                        output="hub://acme/token-check")
    job.wait(timeout=90)

    # when everything the job left behind is read: Redis, its folder, the repo, the worker's log
    redis_text = repr({k: _value(client, k) for k in client.redis.scan_iter("*")})
    folder_text = "".join(p.read_bytes().decode(errors="replace") for p in job.output_dir.rglob("*") if p.is_file())
    repo_text = "".join(b.decode(errors="replace") for b in hub.files("acme/token-check").values())
    log_text = hub_worker.log.read_text(errors="replace")

    # then the token was sent to the Hub, and is nowhere else
    assert any(r.headers.get("authorization") == f"Bearer {hub.token}" for r in hub.requests)
    for text in (redis_text, folder_text, repo_text, log_text):
        assert hub.token not in text


def test_an_interrupted_upload_resumes_sending_only_what_is_missing(client: Client, hub: FakeHub,
                                                                     hub_settings: Settings, encoder: Path,
                                                                     texts: list[str]) -> None:
    # given a 6-shard job whose upload breaks after its first commit (2 shards) landed
    hub.break_after(1)
    job = client.submit(task="feature-extraction", model=str(encoder), inputs=texts[:30], chunk_size=5,
                        output="hub://acme/interrupted")
    with pytest.raises(Exception, match="publishing them to hub://acme/interrupted failed") as info:
        job.wait(timeout=90)
    assert "hfq resume" in str(info.value)
    first = hub.commits("acme/interrupted")
    assert len(first) == 1 and len(first[0].added) == 2

    # when the Hub is back and the job is resumed with the hfq command
    hub.heal()
    done = subprocess.run([sys.executable, "-m", "hfqueue", "resume", job.id], env=settings_env(hub_settings) |
                          hub.env(), capture_output=True, text=True, timeout=60)

    # then the job completes; the rerun committed only the four missing shards and the card, and no file's
    # bytes were sent twice (the broken commit's uploads were already stored, and the Hub said so)
    assert done.returncode == 0, done.stderr
    assert job.status().state == JobState.COMPLETED
    rerun = [path for commit in hub.commits("acme/interrupted")[1:] for path in commit.added]
    assert sorted(rerun) == ["README.md", *[f"data/train-{i:05d}-of-00006.parquet" for i in range(2, 6)]]
    sent = [u.sha256 for u in hub.lfs_uploads() if u.repo_id == "acme/interrupted"]
    assert len(sent) == len(set(sent)) == 6
    assert [r["row_idx"] for r in shard_table(hub.files("acme/interrupted"))] == list(range(30))
    assert hub.token not in done.stdout + done.stderr


def test_a_transient_hub_error_is_retried(client: Client, hub: FakeHub, encoder: Path, texts: list[str]) -> None:
    # given a Hub that answers 503 to the first commit, then recovers
    hub.fail("POST", r"/api/datasets/acme/flaky/commit/", status=503, times=1)

    # when a job publishes there
    job = client.submit(task="feature-extraction", model=str(encoder), inputs=texts[:8], output="hub://acme/flaky")
    status = job.wait(timeout=90)

    # then the commit was tried again and the job completed
    commits = [r.status for r in hub.requests if r.method == "POST" and "/acme/flaky/commit/" in r.path]
    assert commits[0] == 503 and 200 in commits[1:]
    assert status.state == JobState.COMPLETED
    assert [r["row_idx"] for r in shard_table(hub.files("acme/flaky"))] == list(range(8))


def test_a_branch_and_a_public_repo(client: Client, hub: FakeHub, encoder: Path, texts: list[str]) -> None:
    # given a job published to branch v2 of a public repo
    job = client.submit(task="feature-extraction", model=str(encoder), inputs=texts[:6],
                        output="hub://acme/branched@v2", output_private=False)

    # when it finishes
    job.wait(timeout=90)

    # then the shards are on v2 only, and the repo is public
    assert any(p.startswith("data/") for p in hub.files("acme/branched", revision="v2"))
    assert not any(p.startswith("data/") for p in hub.files("acme/branched", revision="main"))
    assert not hub.is_private("acme/branched")


def _value(client: Client, key: str) -> object:
    kind = client.redis.type(key)
    r = client.redis
    return {"string": r.get, "hash": r.hgetall, "list": lambda k: r.lrange(k, 0, -1), "set": r.smembers,
            "zset": lambda k: r.zrange(k, 0, -1)}.get(kind, lambda k: None)(key)


def test_an_hf_fsspec_url_copies_the_files_into_an_existing_repo(client: Client, hub: FakeHub, encoder: Path,
                                                                 texts: list[str]) -> None:
    # given a Hub dataset repo (made by a hub:// job) and a second job whose output is an hf:// folder in it
    client.submit(task="feature-extraction", model=str(encoder), inputs=texts[:4],
                  output="hub://acme/fs-target").wait(timeout=90)
    job = client.submit(task="feature-extraction", model=str(encoder), inputs=texts[:12], chunk_size=6,
                        output="hf://datasets/acme/fs-target/copy")

    # when it finishes
    status = job.wait(timeout=90)

    # then fsspec's HfFileSystem wrote the same layout under copy/, beside what the first job published
    assert status.state == JobState.COMPLETED
    files = hub.files("acme/fs-target")
    copied = {p: b for p, b in files.items() if p.startswith("copy/")}
    assert "copy/README.md" in copied and any(p.startswith("data/") for p in files)
    rows = [row for name in sorted(p for p in copied if p.endswith(".parquet"))
            for row in pq.read_table(io.BytesIO(copied[name])).to_pylist()]
    assert [r["row_idx"] for r in rows] == list(range(12))
