"""Who owns what through the API: every job, batch and file records its API key's name, and each name has an
index of its own, so a list shows a key only its own things and a lookup of another's answers 404."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from hfqueue.state.keys import Keys

if TYPE_CHECKING:
    from hfqueue.producer.client import Client


def own(client: Client, owner: str, kind: str, item_id: str) -> None:
    """Add ``item_id`` to ``owner``'s index of ``kind`` (jobs, batches, files)."""
    now = time.time()
    key = Keys.owned(owner, kind)
    ttl = client.settings.job_ttl  # an index lives as long as the jobs it lists
    with client.redis.pipeline() as p:
        p.zadd(key, {item_id: now})
        p.zremrangebyscore(key, "-inf", now - ttl)
        p.expire(key, ttl)
        p.execute()


def page(client: Client, owner: str, kind: str, limit: int, after: str | None) -> tuple[list[str], bool]:
    """Newest first: up to ``limit`` ids after the id ``after`` (exclusive), and whether more follow."""
    key = Keys.owned(owner, kind)
    start = 0
    if after is not None:
        rank = client.redis.zrevrank(key, after)
        if rank is None:
            return [], False
        start = rank + 1
    ids = client.redis.zrevrange(key, start, start + limit)
    return ids[:limit], len(ids) > limit


def owns(client: Client, owner: str, kind: str, item_id: str) -> bool:
    """Whether ``item_id`` is in ``owner``'s index."""
    return client.redis.zscore(Keys.owned(owner, kind), item_id) is not None


def disown(client: Client, owner: str, kind: str, item_id: str) -> None:
    """Take ``item_id`` out of ``owner``'s index (it was deleted)."""
    client.redis.zrem(Keys.owned(owner, kind), item_id)
