"""Who owns what through the API: every job, batch and file records its API key's name, and each name has an
index of its own, so a list shows a key only its own things and a lookup of another's answers 404."""

from __future__ import annotations

import time

import redis

from hfqueue.state.keys import Keys


def own(r: redis.Redis, owner: str, kind: str, item_id: str, *, ttl: int) -> None:
    """Add ``item_id`` to ``owner``'s index of ``kind`` (jobs, batches, files); entries live ``ttl`` seconds (as
    long as the jobs it lists)."""
    now = time.time()
    key = Keys.owned(owner, kind)
    with r.pipeline() as p:
        p.zadd(key, {item_id: now})
        p.zremrangebyscore(key, "-inf", now - ttl)
        p.expire(key, ttl)
        p.execute()


def page(r: redis.Redis, owner: str, kind: str, limit: int, after: str | None) -> tuple[list[str], bool]:
    """Newest first: up to ``limit`` ids after the id ``after`` (exclusive), and whether more follow."""
    key = Keys.owned(owner, kind)
    start = 0
    if after is not None:
        rank = r.zrevrank(key, after)
        if rank is None:
            return [], False
        start = rank + 1
    ids = r.zrevrange(key, start, start + limit)
    return ids[:limit], len(ids) > limit



def disown(r: redis.Redis, owner: str, kind: str, item_id: str) -> None:
    """Take ``item_id`` out of ``owner``'s index (it was deleted)."""
    r.zrem(Keys.owned(owner, kind), item_id)
