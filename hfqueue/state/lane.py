"""The request lane's Redis side: producers push entries and wait for replies; consumers take them reliably.

``client.infer`` requests and small jobs are pushed onto ``hfq:requests:<queue>``. A serving process
moves each entry it takes (``LMOVE``) onto its own processing list and removes it only once answered.
Each process keeps a heartbeat key alive from its own thread; any process that finds a consumer whose
heartbeat has expired moves that consumer's entries back to the head of the lane. An entry is thus
served at least once: a small job's part is idempotent (see :mod:`hfqueue.worker.chunks`), a repeated
``infer`` reply is ignored, and the chunk attempt counter stops a job entry that kills every process
that takes it.
"""

from __future__ import annotations

import logging
import math
import os
import socket

import redis

from hfqueue.core.messages import InferReply, LaneEntry
from hfqueue.state.keys import Keys

logger = logging.getLogger(__name__)

HEARTBEAT_TTL = 10  # seconds a consumer counts as alive after its last heartbeat
HEARTBEAT_EVERY = 2.0  # seconds between heartbeats, well inside the TTL
SWEEP_EVERY = 5.0  # seconds between looks for dead consumers
REPLY_TTL = 60  # seconds a reply waits for a caller that gave up


def push(r: redis.Redis, queue: str, entry: LaneEntry) -> str:
    """Put ``entry`` at the tail of the lane of ``queue``; return its raw form (to take it back by)."""
    raw = entry.model_dump_json()
    r.rpush(Keys.requests(queue), raw)
    return raw


def withdraw(r: redis.Redis, queue: str, raw: str) -> bool:
    """Take an entry back if no consumer has taken it yet; whether it was still waiting."""
    return bool(r.lrem(Keys.requests(queue), 1, raw))


def wait_reply(r: redis.Redis, request_id: str, timeout: float) -> InferReply | None:
    """The reply to infer request ``request_id``, waiting up to ``timeout`` seconds (whole seconds, at least 1)."""
    reply = r.blpop([Keys.reply(request_id)], timeout=max(1, math.ceil(timeout)))
    return None if reply is None else InferReply.model_validate_json(reply[1])


def send_reply(r: redis.Redis, request_id: str, reply: InferReply) -> None:
    """Answer infer request ``request_id``; the reply expires if its caller has given up."""
    key = Keys.reply(request_id)
    with r.pipeline() as pipe:
        pipe.rpush(key, reply.model_dump_json())
        pipe.expire(key, REPLY_TTL)
        pipe.execute()


class Lane:
    """One serving process's end of the request lane of ``queue``."""

    def __init__(self, r: redis.Redis, queue: str, consumer: str | None = None, *, keep: int = 7 * 24 * 3600) -> None:
        self.r = r
        self.keep = keep  # seconds the consumers set and processing lists outlive the last heartbeat
        self.consumer = consumer or f"{socket.gethostname()}:{os.getpid()}"
        self.key = Keys.requests(queue)
        self.processing = Keys.processing(queue, self.consumer)
        self._queue = queue

    def heartbeat(self) -> None:
        """Say this consumer is alive for the next HEARTBEAT_TTL seconds."""
        with self.r.pipeline() as p:
            p.set(Keys.alive(self.consumer), 1, ex=HEARTBEAT_TTL)
            p.sadd(Keys.consumers(self._queue), self.consumer)
            # Sweeps clean up after dead consumers while any consumer of the queue lives; these TTLs clean
            # up when none is left (by then the jobs of any entries left behind have expired too).
            p.expire(Keys.consumers(self._queue), self.keep)
            p.expire(self.processing, self.keep)
            p.execute()

    def pop(self, timeout: float) -> str | None:
        """The next entry, waiting up to ``timeout`` seconds; it stays on this consumer's list until acked."""
        return self.r.blmove(self.key, self.processing, timeout, "LEFT", "RIGHT")

    def take(self) -> str | None:
        """The next entry if one is waiting, else None at once."""
        return self.r.lmove(self.key, self.processing, "LEFT", "RIGHT")

    def ack(self, raw: str) -> None:
        """``raw`` is answered: forget it."""
        self.r.lrem(self.processing, 1, raw)

    def sweep(self) -> int:
        """Move the entries of consumers whose heartbeat expired back to the lane's head; return how many."""
        moved = 0
        for other in self.r.smembers(Keys.consumers(self._queue)):
            if other == self.consumer or self.r.exists(Keys.alive(other)):
                continue
            held = Keys.processing(self._queue, other)
            # Tail first onto the head, so the entries keep their order, ahead of newer ones.
            while self.r.lmove(held, self.key, "RIGHT", "LEFT") is not None:
                moved += 1
            self.r.srem(Keys.consumers(self._queue), other)
        if moved:
            logger.warning("re-queued %d request-lane entries held by consumers that stopped", moved)
        return moved
