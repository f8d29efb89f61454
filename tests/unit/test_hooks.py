"""Hooks: observers hear what the worker does, and one that raises never takes the work down."""

from __future__ import annotations

import logging
import socket
import urllib.request
from collections.abc import Mapping

import pytest

from hfqueue.core.hooks import Hooks, SafeHooks
from hfqueue.monitoring.metrics import PrometheusHooks

pytestmark = pytest.mark.timeout(30)


class Recorder(Hooks):
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int]] = []

    def batch_done(self, task: str, model: str, *, rows: int, real_tokens: int, padded_tokens: int,
                   seconds: float) -> None:
        self.calls.append((task, model, rows))


class Broken(Hooks):
    def batch_done(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError("observer bug")


def test_a_hook_that_raises_is_logged_and_the_others_still_hear(caplog: pytest.LogCaptureFixture) -> None:
    # given a broken hook before a working one
    recorder = Recorder()
    hooks = SafeHooks([Broken(), recorder])

    # when a batch is reported
    with caplog.at_level(logging.WARNING):
        hooks.batch_done("t", "m", rows=3, real_tokens=10, padded_tokens=12, seconds=0.1)

    # then the call did not raise, the failure was logged by name, and the working hook heard it
    assert recorder.calls == [("t", "m", 3)]
    assert "hook Broken.batch_done failed" in caplog.text


def test_every_hook_has_a_safe_fan_out() -> None:
    # given the hook calls of the base, then SafeHooks overrides each of them
    names = [n for n, v in vars(Hooks).items() if callable(v) and not n.startswith("_")]
    assert len(names) >= 10 and all(n in vars(SafeHooks) for n in names)


def test_prometheus_hooks_count_a_batch_with_bounded_labels() -> None:
    # given a registry of a worker named w1
    hooks = PrometheusHooks("w1", "cpu")

    # when two batches of one model run
    hooks.batch_done("fill-mask", "m", rows=4, real_tokens=30, padded_tokens=40, seconds=0.2)
    hooks.batch_done("fill-mask", "m", rows=2, real_tokens=20, padded_tokens=20, seconds=0.1)
    text = hooks.exposition().decode()

    # then tokens, batches and the efficiency histogram say so, labelled by task, model and worker only
    labels = 'model="m",task="fill-mask",worker="w1"'
    assert f'hfq_tokens_total{{kind="real",{labels}}} 50.0' in text
    assert f'hfq_tokens_total{{kind="padded",{labels}}} 60.0' in text
    assert f"hfq_batches_total{{{labels}}} 2.0" in text
    assert f'hfq_batch_padding_efficiency_bucket{{le="0.8",{labels}}} 1.0' in text  # 0.75 and 1.0
    assert f"hfq_batch_rows_sum{{{labels}}} 6.0" in text
    assert "_created" not in text and "process_resident_memory_bytes" in text


def test_prometheus_hooks_count_truncated_rows() -> None:
    # given a worker's registry
    hooks = PrometheusHooks("w1", "cpu")

    # when two sets of rows ran, three rows of them cut to the model's input limit
    hooks.rows_done("feature-extraction", "m", ok=10, failed=1, truncated=2)
    hooks.rows_done("feature-extraction", "m", ok=5, failed=0, truncated=1)
    text = hooks.exposition().decode()

    # then the truncated counter says three, beside the rows by outcome
    labels = 'model="m",task="feature-extraction",worker="w1"'
    assert f"hfq_rows_truncated_total{{{labels}}} 3.0" in text
    assert 'hfq_rows_total{model="m",outcome="ok",task="feature-extraction",worker="w1"} 15.0' in text


class Serving(Hooks):
    def __init__(self, url: str | None) -> None:
        self.url = url

    def serving_started(self, *, address: str, port: int) -> str | None:
        return self.url


class Ended(Hooks):
    def __init__(self) -> None:
        self.ended: list[str] = []

    def job_ended(self, job_id: str, record: Mapping[str, str]) -> None:
        self.ended.append(f"{job_id}:{record['state']}")


def test_safe_hooks_tell_every_hook_a_job_ended_and_return_the_first_served_url() -> None:
    # given hooks of which one serves nothing, one serves an endpoint, one breaks, and one follows jobs
    ended = Ended()
    hooks = SafeHooks([Serving(None), Serving("http://h:1/metrics"), Broken(), Serving("http://h:2/x"), ended])
    # when the serving process starts and a job ends
    url = hooks.serving_started(address="127.0.0.1", port=1)
    hooks.job_ended("j1", {"state": "completed"})
    # then the first URL wins and the job's end reached the hook that follows jobs
    assert url == "http://h:1/metrics"
    assert ended.ended == ["j1:completed"]


def test_prometheus_hooks_serve_their_endpoint_only_on_a_free_port(caplog: pytest.LogCaptureFixture) -> None:
    # given a port that is taken and the metrics hooks of a worker
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        hooks = PrometheusHooks("w@test", "cpu")
        # when its serving process starts with no port, the taken port, and a free one
        none = hooks.serving_started(address="127.0.0.1", port=0)
        refused = hooks.serving_started(address="127.0.0.1", port=taken.getsockname()[1])
        free = _free_port()
        url = hooks.serving_started(address="127.0.0.1", port=free)
    # then it serves only on the free port, and says why it could not on the taken one
    assert (none, refused) == (None, None)
    assert "cannot serve metrics on port" in caplog.text
    assert url == f"http://127.0.0.1:{free}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        assert b"hfq_" in response.read()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
