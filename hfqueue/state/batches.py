"""An OpenAI batch's record in Redis: its state, times, jobs and request counts (see :mod:`hfqueue.openai_batch`).

States change through :mod:`hfqueue.lifecycle.batches`, in one Lua step each, like a job's.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import redis

from hfqueue.state.keys import Keys
from hfqueue.state.store import TRANSITION_LUA, encode, move

CLAIM_TTL = 600  # seconds: writing a batch's output files takes far less; a writer that died is taken over after


class BatchStore:
    """Reads and writes OpenAI batch records. One instance per process; cheap to share."""

    def __init__(self, client: redis.Redis, ttl: int) -> None:
        self._r = client
        self.ttl = ttl
        self._transition = client.register_script(TRANSITION_LUA)

    def create(self, batch_id: str, record: dict[str, Any]) -> None:
        """Write a new batch record and index it; prune index entries of expired batches."""
        with self._r.pipeline() as p:
            p.hset(Keys.batch(batch_id), mapping={k: encode(v) for k, v in record.items()})
            p.expire(Keys.batch(batch_id), self.ttl)
            p.zadd(Keys.batches, {batch_id: record["created_at"]})
            p.zremrangebyscore(Keys.batches, "-inf", time.time() - self.ttl)
            p.execute()

    def get(self, batch_id: str) -> dict[str, str]:
        """The raw batch record; empty when Redis has none."""
        return self._r.hgetall(Keys.batch(batch_id))

    def fields(self, batch_id: str, *names: str) -> list[str | None]:
        """Some fields of the batch record (None for a missing one)."""
        return self._r.hmget(Keys.batch(batch_id), list(names))

    def set_fields(self, batch_id: str, **fields: Any) -> None:
        """Set plain fields of the batch record."""
        self._r.hset(Keys.batch(batch_id), mapping={k: encode(v) for k, v in fields.items()})

    def move(self, batch_id: str, new: str, allowed_from: tuple[str, ...], time_field: str = "", **fields: Any
             ) -> bool:
        """Move the batch to ``new`` if it is in one of ``allowed_from``; set ``fields`` when it moved."""
        return move(self._transition, Keys.batch(batch_id), new, allowed_from, time_field, **fields)

    def claim(self, batch_id: str) -> bool:
        """Whether this caller may write the batch's output files: the first to ask wins, for CLAIM_TTL seconds."""
        return bool(self._r.set(Keys.batch_claim(batch_id), secrets.token_hex(8), nx=True, ex=CLAIM_TTL))

    def release(self, batch_id: str) -> None:
        """Give the claim up (writing the files failed; the next look tries again)."""
        self._r.delete(Keys.batch_claim(batch_id))
