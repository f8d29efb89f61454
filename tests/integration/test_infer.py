"""``client.infer``: small requests answered by a real worker, coalesced across concurrent callers."""

from __future__ import annotations

import asyncio
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from hfqueue import Client, HfqError, InvalidSpecError, JobSpec, WaitTimeoutError
from hfqueue.core.jobs import model_fields
from hfqueue.core.messages import LaneEntry
from hfqueue.state import lane
from hfqueue.state.keys import Keys

pytestmark = pytest.mark.timeout(120)


def test_infer_returns_what_a_job_returns_in_input_order(client: Client, classifier: Path, texts: list[str]) -> None:
    # given the same rows run as a job
    expected = client.submit(task="text-classification", model=str(classifier), inputs=texts[:10],
                             options={"top_k": None}).result(timeout=90)

    # when they are sent through infer
    got = client.infer("text-classification", texts[:10], str(classifier), options={"top_k": None})

    # then each output equals the job's row, in order
    assert [g["labels"] for g in got] == expected["labels"]
    for g, want in zip(got, expected["scores"], strict=True):
        assert g["scores"] == pytest.approx(want, abs=1e-6)


def test_concurrent_callers_each_get_their_own_rows(client: Client, encoder: Path, texts: list[str]) -> None:
    # given 40 callers on 8 threads, each with its own two rows
    def call(i: int) -> list[dict]:
        return client.infer("feature-extraction", [texts[i], texts[i + 1]], str(encoder))

    alone = {i: call(i) for i in (0, 17, 39)}

    # when they call at once (the worker gathers their requests into shared batches)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, range(40)))

    # then every caller got two embeddings, and they equal those computed for that caller alone
    assert all(len(r) == 2 for r in results)
    for i, want in alone.items():
        assert results[i][0]["embedding"] == pytest.approx(want[0]["embedding"], abs=1e-5)
        assert results[i][1]["embedding"] == pytest.approx(want[1]["embedding"], abs=1e-5)


def test_ainfer_works_from_asyncio(client: Client, classifier: Path) -> None:
    # given an event loop, when two requests are awaited together, then both are answered
    async def both() -> list[list[dict]]:
        return await asyncio.gather(client.ainfer("sentiment-analysis", ["good"], str(classifier)),
                                    client.ainfer("sentiment-analysis", ["bad", "fine"], str(classifier)))

    first, second = asyncio.run(both())
    assert len(first) == 1 and len(second) == 2 and all("label" in o for o in first + second)


def test_a_failing_row_is_named(client: Client, masked_lm: Path) -> None:
    # given fill-mask inputs where the second has no mask token, then the error names input 1
    with pytest.raises(HfqError, match="1 of 2 inputs failed; input 1: ValueError: fill-mask needs the mask token"):
        client.infer("fill-mask", ["the [MASK] is here", "no mask"], str(masked_lm))


def test_bad_input_is_refused_before_anything_is_sent(idle_client: Client, classifier: Path) -> None:
    with pytest.raises(InvalidSpecError, match="temperature only apply when sampling"):
        idle_client.infer("text-generation", ["hi"], str(classifier), options={"temperature": 0.5})
    assert idle_client.redis.llen(Keys.requests(idle_client.settings.queue)) == 0


@pytest.mark.timeout(20)
def test_no_worker_means_a_timeout_and_the_request_is_taken_back(idle_client: Client, classifier: Path) -> None:
    # given no worker on this queue, when infer waits 1 s, then it times out and leaves nothing queued
    with pytest.raises(WaitTimeoutError, match="no worker answered within 1"):
        idle_client.infer("text-classification", ["hi"], str(classifier), timeout=1)
    assert idle_client.redis.llen(Keys.requests(idle_client.settings.queue)) == 0


def test_requests_that_differ_in_load_options_are_not_batched_together(client: Client, classifier: Path) -> None:
    # given two requests for the same model and options, one asking for trust_remote_code (refused by this
    # worker), pushed in one command so the worker gathers them together
    base = JobSpec(task="text-classification", model=str(classifier), inputs=["x"])
    requests = [LaneEntry(id=secrets.token_hex(8), inputs=["good"], sent_at=time.time(),
                          spec=model_fields(base.model_copy(update={"trust_remote_code": trust})))
                for trust in (True, False)]
    client.redis.rpush(Keys.requests(client.settings.queue), *(r.model_dump_json() for r in requests))

    # when both are answered
    refused, served = (lane.wait_reply(client.redis, r.id, timeout=30) for r in requests)

    # then only the one that asked for remote code is refused
    assert refused is not None and served is not None
    assert "trust_remote_code" in refused.errors[0][1]
    assert served.errors == {} and served.outputs[0]["label"]
