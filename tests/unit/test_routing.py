"""Model-affinity routing against a real redis-server: where chunks go, and how a dead worker's queue empties."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from hfqueue.core.jobs import JobSpec
from hfqueue.state import presence
from hfqueue.state.embedded import RedisServer
from hfqueue.state.keys import Keys
from hfqueue.state.routing import hand_back, register_queues, route, sweep, worker_queue

pytestmark = pytest.mark.timeout(30)
SPEC = JobSpec(task="feature-extraction", model="org/model-x", inputs=["a"])


@pytest.fixture
def r(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    client.close()


def alive(r: redis.Redis, name: str, queue: str, models: list[str]) -> None:
    """A worker record as a serving process reports it, holding ``models`` for feature-extraction."""
    held = [{"task": "feature-extraction", "model": m, "revision": None, "device": "cpu", "dtype": "auto",
             "quantization": None} for m in models]
    presence.report(r, presence.WorkerInfo(name=name, host="h", pid=1, queue=queue, device="cpu", models=held,
                                           started_at=time.time()), keep=60)


def test_chunks_go_to_holders_up_to_their_room_then_to_the_shared_queue(r: redis.Redis) -> None:
    # given two live workers holding the job's model (one with a chunk already waiting) and one that does not
    q = f"route-{time.monotonic_ns()}"
    alive(r, "a@h", q, ["org/model-x"])
    alive(r, "b@h", q, ["org/model-x", "org/other"])
    alive(r, "c@h", q, ["org/other"])
    r.lpush(worker_queue(q, "normal", "b@h"), "waiting")

    # when a job of six chunks is routed, two per holder at most
    queues = route(r, q, SPEC, 6, per_worker=2)

    # then the holders get their room, alternating, and the rest goes to the shared queue
    a, b = worker_queue(q, "normal", "a@h"), worker_queue(q, "normal", "b@h")
    assert queues == [a, b, a, q, q, q]
    # and a high job goes to the holders' high queues; affinity off, or nobody holding the model: shared only
    high = SPEC.model_copy(update={"priority": "high"})
    assert route(r, q, high, 1, per_worker=2) == [worker_queue(q, "high", "a@h")]
    assert route(r, q, SPEC, 2, per_worker=0) == [q, q]
    assert route(r, q, SPEC.model_copy(update={"model": "org/nobody"}), 2, per_worker=2) == [q, q]
    # and while chunks wait in the shared queue, a new job queues behind them, holders or not
    r.lpush(q, "queued earlier")
    assert route(r, q, SPEC, 2, per_worker=2) == [q, q]


def test_a_dead_workers_queue_is_swept_oldest_first_and_forgotten_later(r: redis.Redis) -> None:
    # given a worker whose heartbeat stopped long ago, with three chunks queued for it (kombu pushes left)
    q = f"sweep-{time.monotonic_ns()}"
    own = worker_queue(q, "normal", "gone@h")
    for chunk in ("first", "second", "third"):
        r.lpush(own, chunk)
    r.zadd(Keys.affinity(q), {"gone@h": time.time() - 3600})
    r.sadd(f"_kombu.binding.{own}", "route")
    register_queues(r, q, "alive@h", keep=60)

    # when a live worker sweeps, with a redelivery window shorter than the silence
    moved = sweep(r, q, redelivery_window=60)

    # then the chunks are on the shared queue, taken (from the right) in their old order; the dead worker and its
    # routes are forgotten, the live one is kept
    assert moved == 3 and [r.rpop(q) for _ in range(3)] == ["first", "second", "third"]
    assert r.zrange(Keys.affinity(q), 0, -1) == ["alive@h"] and not r.exists(f"_kombu.binding.{own}")


def test_a_worker_stopping_hands_its_queue_back(r: redis.Redis) -> None:
    # given chunks queued for a worker at two priorities, when it stops warm
    q = f"back-{time.monotonic_ns()}"
    r.lpush(worker_queue(q, "high", "w@h"), "h1")
    r.lpush(worker_queue(q, "low", "w@h"), "l1", "l2")

    # then each goes to the shared queue of its priority
    assert hand_back(r, q, "w@h") == 3
    assert r.lrange(f"{q}.high", 0, -1) == ["h1"] and r.lrange(f"{q}.low", 0, -1) == ["l2", "l1"]
