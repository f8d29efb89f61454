"""Model-affinity routing: a job's first chunks go straight to the workers that already hold its model.

Every worker consumes, for each priority, a queue of its own (``hfq.w.NODE``) just before the shared
queue of that priority (``hfq``), and takes from them in that order. At submit, the producer looks up
the live workers of the queue whose resident models include the job's (their presence records) and
sends each of them up to ``HFQ_AFFINITY_CHUNKS`` chunks, counting what already waits in its queue; the
rest go to the shared queue. While chunks wait in the shared queue, every chunk goes there: a job never
overtakes work queued before it. So a holder takes the job's chunks first and no other worker loads the
model for a small job, while a large job still spreads over every worker, and a job whose model no
worker holds goes to the shared queue like any other.

A worker stopping warm hands what waits in its own queues back to the shared ones. One that dies
leaves them unconsumed: every serving process sweeps the queues of workers whose heartbeat stopped
back onto the shared queues (oldest first), and keeps sweeping them for a visibility timeout, since
Redis re-delivers a chunk the dead worker held to the queue it came from.
"""

from __future__ import annotations

import time
from itertools import chain, zip_longest

import redis

from hfqueue.core.jobs import PRIORITIES, JobSpec, priority_queue
from hfqueue.state import presence
from hfqueue.state.keys import Keys

KOMBU_BINDING = "_kombu.binding."  # kombu's Redis key of a queue's routes (its `keyprefix_queue`)


def worker_queue(queue: str, priority: str, node: str) -> str:
    """The queue only worker ``node`` takes from, for ``priority`` (``hfq.w.NODE``, ``hfq.high.w.NODE``, ...)."""
    return f"{priority_queue(queue, priority)}.w.{node}"


def consumed_queues(queue: str, node: str) -> list[str]:
    """The queues worker ``node`` takes from, in the order it polls them: its own before the shared, by priority."""
    return [q for p in PRIORITIES for q in (worker_queue(queue, p, node), priority_queue(queue, p))]


def route(r: redis.Redis, queue: str, spec: JobSpec, chunks: int, per_worker: int) -> list[str]:
    """The queue of each of a job's ``chunks`` chunks, in order: holders of its model first, then the shared one."""
    shared = priority_queue(queue, spec.priority)
    # Never ahead of chunks already waiting: with a backlog the shared queue keeps its order (workers take their
    # own queue first, so a steady stream of jobs for a held model would otherwise starve it), and every worker
    # is busy anyway.
    if per_worker <= 0 or r.llen(shared) > 0:
        return [shared] * chunks
    slots: list[list[str]] = []
    for node in holders(r, queue, spec):
        own = worker_queue(queue, spec.priority, node)
        slots.append([own] * max(0, per_worker - int(r.llen(own))))  # what already waits there counts
    spread = [q for q in chain.from_iterable(zip_longest(*slots)) if q is not None][:chunks]
    return spread + [shared] * (chunks - len(spread))


def holders(r: redis.Redis, queue: str, spec: JobSpec) -> list[str]:
    """Live workers of ``queue`` that hold the spec's model (same task, model, revision and quantization)."""
    wanted = (spec.task, spec.model, spec.revision, spec.quantization)
    return [w.name for w in presence.live(r) if w.queue == queue and any(
        (m["task"], m["model"], m["revision"], m["quantization"]) == wanted for m in w.models)]


def register_queues(r: redis.Redis, queue: str, node: str, *, keep: int) -> None:
    """Record that ``node`` has queues of its own and is alive now (from its heartbeat), so they are swept
    should it die."""
    with r.pipeline() as p:
        p.zadd(Keys.affinity(queue), {node: time.time()})
        p.expire(Keys.affinity(queue), keep)
        p.execute()


def sweep(r: redis.Redis, queue: str, *, redelivery_window: float) -> int:
    """Move the chunks waiting in the queues of dead workers onto the shared queues; return how many.

    A worker is dead once its heartbeat is older than the presence TTL; it is forgotten once no chunk it
    held can come back any more (``redelivery_window`` after its last heartbeat).
    """
    now, moved = time.time(), 0
    for node, seen in r.zrangebyscore(Keys.affinity(queue), "-inf", now - presence.PRESENCE_TTL, withscores=True):
        moved += hand_back(r, queue, str(node))
        if seen < now - redelivery_window:  # nothing of it can come back now: forget it, and kombu's routes to it
            r.zrem(Keys.affinity(queue), node)
            r.delete(*(KOMBU_BINDING + worker_queue(queue, p, str(node)) for p in PRIORITIES))
    return moved


def hand_back(r: redis.Redis, queue: str, node: str) -> int:
    """Move what waits in ``node``'s own queues onto the shared ones (its worker died or stops); return how many.

    Newest first onto the consuming end of the shared queue, so the oldest is taken first, as it would have been.
    """
    moved = 0
    for priority in PRIORITIES:
        while r.lmove(worker_queue(queue, priority, node), priority_queue(queue, priority), "LEFT", "RIGHT"):
            moved += 1
    return moved
