"""Models named by Hub id, served from a loopback Hub (tests/fake_hub.py) into a Hub cache of the test's own.

A worker keys a Hub model by the commit its revision resolves to (``hfqueue.cache.versions``): online by asking the
Hub, offline by reading the Hub cache's refs and snapshots. So a branch that moves loads the new commit instead of
serving the resident old one, and the result cache reuses rows exactly while the commit is the same.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers
from huggingface_hub import HfApi, snapshot_download

from hfqueue import Client, Job, Settings
from hfqueue.sinks.local import read_manifest
from hfqueue.state.embedded import free_port
from tests.conftest import WorkerProcess, wait_for, wait_serving
from tests.fake_hub import FakeHub, use_fake_hub
from tests.integration.monitoring import scrape, total
from tests.integration.test_jobs import direct_embeddings
from tests.tiny_models import sentences

pytestmark = pytest.mark.timeout(180)

REPO = "acme/tiny-encoder"


@dataclass
class Hub:
    fake: FakeHub
    cache: Path  # the workers' Hub cache (HF_HUB_CACHE)
    commits: dict[str, str]  # "a" (main) and "b" (branch "next") -> commit
    folders: dict[str, Path]  # the same weights as local folders, to compute what each commit gives


@pytest.fixture(scope="module")
def hub(encoder: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    """A model repo whose main holds the encoder (A), and whose branch ``next`` holds other weights (B)."""
    root = tmp_path_factory.mktemp("hub-models")
    other = root / "b"
    model = transformers.AutoModel.from_pretrained(encoder)
    with torch.no_grad():
        model.embeddings.word_embeddings.weight.mul_(-1.5)
    model.save_pretrained(other)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(encoder / name, other / name)
    with FakeHub() as fake, pytest.MonkeyPatch.context() as patch, use_fake_hub(fake, patch, root / "uploader"):
        api = HfApi(endpoint=fake.url, token=fake.token)
        api.create_repo(REPO, repo_type="model")
        a = api.upload_folder(folder_path=encoder, repo_id=REPO, repo_type="model").oid
        api.create_branch(REPO, branch="next")
        b = api.upload_folder(folder_path=other, repo_id=REPO, repo_type="model", revision="next").oid
        yield Hub(fake, root / "hub-cache", {"a": a, "b": b}, {"a": encoder, "b": other})


def start(settings: Settings, worker_factory: Callable[..., WorkerProcess], env: dict[str, str]
          ) -> Iterator[Settings]:
    """A worker of its own queue and metrics port, stopped when the module ends (the fewer workers live on, the
    fewer answer every later test's pings)."""
    mine = settings.model_copy(update={"queue": f"hub-models-{time.monotonic_ns()}", "metrics_port": free_port(),
                                       "metrics_address": "127.0.0.1"})
    worker = worker_factory(mine, env=env)
    wait_serving(f"http://127.0.0.1:{mine.metrics_port}/metrics", worker.proc, worker.log, "worker metrics", 30)
    yield mine
    worker.stop()


@pytest.fixture(scope="module")
def shared(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """What both workers share: the output root, and so the result cache under it."""
    return settings.model_copy(update={"reuse": True, "output_root": tmp_path_factory.mktemp("hub-results")})


@pytest.fixture(scope="module")
def online(shared: Settings, hub: Hub, worker_factory: Callable[..., WorkerProcess]) -> Iterator[Settings]:
    """A worker that reaches the Hub."""
    yield from start(shared, worker_factory, hub.fake.env() | {"HF_HUB_CACHE": str(hub.cache)})


@pytest.fixture(scope="module")
def offline(shared: Settings, hub: Hub, worker_factory: Callable[..., WorkerProcess]) -> Iterator[Settings]:
    """A worker that cannot reach the Hub and loads from the Hub cache the online worker filled."""
    yield from start(shared, worker_factory, {"HF_HUB_CACHE": str(hub.cache), "HF_HUB_OFFLINE": "1"})


def embed(settings: Settings, rows: list[str], revision: str | None = None, **fields: Any) -> tuple[np.ndarray, Job]:
    with Client(settings) as client:
        job = client.submit(task="feature-extraction", model=REPO, revision=revision, inputs=rows, chunk_size=8,
                            **fields)
        return np.asarray(job.result(timeout=120)["embedding"], dtype=np.float32), job


def loads(settings: Settings) -> float:
    return total(scrape(f"http://127.0.0.1:{settings.metrics_port}/metrics"), "hfq_model_loads_total")


def test_an_online_worker_keys_hub_rows_by_the_commit_their_revision_resolves_to(online: Settings, hub: Hub) -> None:
    # given rows embedded with the repo's main branch, downloaded from the Hub
    rows = sentences(12, seed=21)
    first, job = embed(online, rows)
    np.testing.assert_allclose(first, direct_embeddings(hub.folders["a"], rows), atol=1e-5)
    assert job.status().rows_reused == 0
    # when they run again naming main's commit in full (once computing), then naming the branch "next"
    loaded = loads(online)
    computed, _ = embed(online, rows, revision=hub.commits["a"], reuse=False)
    second_copy = loads(online) - loaded
    again, pinned = embed(online, rows, revision=hub.commits["a"])
    other, moved = embed(online, rows, revision="next")
    # then the commit is main's: the model main loaded served it (no second copy), and every row is reused
    assert second_copy == 0
    np.testing.assert_allclose(computed, first, atol=1e-6)
    assert pinned.status().rows_reused == len(rows)
    np.testing.assert_array_equal(again, first)
    # and "next" is another commit: nothing reused, its own weights ran
    assert moved.status().rows_reused == 0
    np.testing.assert_allclose(other, direct_embeddings(hub.folders["b"], rows), atol=1e-5)
    # and each job's manifest names the commit that ran
    assert [read_manifest(j.output_dir)["model_revision"] for j in (job, moved)] == [hub.commits[k] for k in "ab"]
    # and the worker's record (`hfq workers`) names the commit of each model it holds
    def held() -> list[str] | None:
        with Client(online) as client:
            worker = next((w for w in client.live_workers() if w.queue == online.queue), None)
        versions = sorted({m["version"] for m in worker.models}) if worker is not None else []
        return versions if len(versions) == 2 else None  # main's commit is held under two names, one copy

    assert wait_for(held, 10, "the worker's record of its models") == sorted(hub.commits.values())


def test_an_offline_worker_follows_the_hub_caches_refs(online: Settings, offline: Settings, hub: Hub) -> None:
    # given rows an online worker stored under main's commit and under "next"'s
    rows = sentences(12, seed=21)
    for revision in (None, "next"):
        embed(online, rows, revision=revision)
    # and an offline worker on a Hub cache that holds both, with refs, as `hf download` leaves them
    with pytest.MonkeyPatch.context() as patch, use_fake_hub(hub.fake, patch, hub.cache):
        for revision in ("main", "next"):
            snapshot_download(REPO, revision=revision, endpoint=hub.fake.url, token=hub.fake.token)
    # when it runs stored rows at main, and at "next"'s commit shortened to 7 characters
    _, main = embed(offline, rows)
    short, shortened = embed(offline, rows, revision=hub.commits["b"][:7])
    # then both resolve through the cache's refs and snapshots: every row is reused, no model is loaded
    assert (main.status().rows_reused, shortened.status().rows_reused) == (len(rows), len(rows))
    np.testing.assert_allclose(short, direct_embeddings(hub.folders["b"], rows), atol=1e-5)
    assert loads(offline) == 0
    # when new rows run at main, then main moves to "next"'s commit (as a download of a newer main leaves it)
    fresh = sentences(20, seed=22)[12:]
    before, _ = embed(offline, fresh)
    (hub.cache / f"models--{REPO.replace('/', '--')}" / "refs" / "main").write_text(hub.commits["b"])
    after, _ = embed(offline, fresh)
    # then the worker loaded main's new commit instead of serving the resident old one
    np.testing.assert_allclose(before, direct_embeddings(hub.folders["a"], fresh), atol=1e-5)
    np.testing.assert_allclose(after, direct_embeddings(hub.folders["b"], fresh), atol=1e-5)
    assert loads(offline) == 2
