"""The job record in Redis: created by the producer, advanced by workers, read by everyone.

State changes and chunk completions are Lua scripts, so two workers finishing chunks at once, or a
chunk delivered twice, can never count rows twice or move a cancelled job back to running.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis
from redis.commands.core import Script

from hfqueue.core.jobs import OPEN_STATES, JobState, JobStatus
from hfqueue.errors import JobNotFoundError
from hfqueue.state.keys import Keys

# KEYS: job hash; ARGV: new state, time field ('' for none), time, number of allowed previous states n,
# the n allowed states, then field, value pairs to set with the state (in the same step, so no reader sees
# a failed job without its error).
TRANSITION_LUA = """
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then return -1 end
local n = tonumber(ARGV[4])
for i = 5, 4 + n do
  if cur == ARGV[i] then
    redis.call('HSET', KEYS[1], 'state', ARGV[1])
    if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], ARGV[2], ARGV[3]) end
    for j = 5 + n, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[j], ARGV[j + 1]) end
    return 1
  end
end
return 0
"""

# KEYS: job hash, done set, chunks hash; ARGV: index, rows ok, rows failed, chunk json, ttl, chunk failed (0/1),
# rows truncated, rows reused
# Returns the number of finished chunks, or -1 when this chunk was already counted (a re-delivery).
_FINISH_CHUNK = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -2 end
if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then return -1 end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
redis.call('HINCRBY', KEYS[1], 'rows_done', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'rows_failed', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'rows_truncated', ARGV[7])
redis.call('HINCRBY', KEYS[1], 'rows_reused', ARGV[8])
if ARGV[6] == '1' then redis.call('HINCRBY', KEYS[1], 'chunks_failed', 1) end
local n = redis.call('HINCRBY', KEYS[1], 'chunks_done', 1)
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[5]) end
return n
"""



class JobStore:
    """Reads and writes job records. One instance per process; cheap to share."""

    def __init__(self, client: redis.Redis, ttl: int) -> None:
        self._r = client
        self.ttl = ttl
        self._transition = client.register_script(TRANSITION_LUA)
        self._finish = client.register_script(_FINISH_CHUNK)

    def create(self, job_id: str, fields: dict[str, Any], *, only_if_absent: bool = False) -> bool:
        """Write a new job record (state queued) and index it; prune index entries of expired jobs.

        ``only_if_absent``: write nothing and return False when the record exists (two resumes at once).
        """
        now = time.time()
        record = {"state": JobState.QUEUED.value, "created_at": now, "rows_done": 0, "rows_failed": 0,
                  "chunks_done": 0, "chunks_failed": 0, **fields}
        with self._r.pipeline() as p:
            if only_if_absent:
                p.watch(Keys.job(job_id))
                if p.exists(Keys.job(job_id)):
                    return False
                p.multi()
            p.delete(Keys.chunks(job_id), Keys.done(job_id))  # leftovers of an earlier life of this id
            p.hset(Keys.job(job_id), mapping={k: encode(v) for k, v in record.items()})
            p.expire(Keys.job(job_id), self.ttl)
            p.zadd(Keys.jobs, {job_id: record["created_at"]})
            p.zremrangebyscore(Keys.jobs, "-inf", now - self.ttl)
            try:
                p.execute()
            except redis.WatchError:
                return False
        return True

    def delete(self, job_id: str) -> None:
        """Remove every key of a job (used when a submit could not enqueue all its chunks)."""
        with self._r.pipeline() as p:
            p.delete(Keys.job(job_id), Keys.chunks(job_id), Keys.done(job_id))
            p.zrem(Keys.jobs, job_id)
            p.execute()

    def get(self, job_id: str) -> dict[str, str]:
        """The raw job record; :class:`JobNotFoundError` when Redis has none."""
        record = self._r.hgetall(Keys.job(job_id))
        if not record:
            raise JobNotFoundError(f"no job {job_id!r} in Redis (unknown id, expired, or Redis lost it)", value=job_id)
        return record

    def state(self, job_id: str) -> JobState | None:
        """The job's state, or None when the record is gone."""
        value = self._r.hget(Keys.job(job_id), "state")
        return JobState(value) if value else None

    def status(self, job_id: str, record: dict[str, str] | None = None) -> JobStatus:
        """A :class:`JobStatus` snapshot of the job (of ``record``, when the caller has just read it)."""
        rec = record if record is not None else self.get(job_id)
        spec = json.loads(rec["spec"])
        return JobStatus(
            job_id=job_id, state=rec["state"], task=spec["task"], model=spec["model"],
            rows_total=int(rec["rows_total"]), rows_done=int(rec["rows_done"]),
            rows_failed=int(rec["rows_failed"]), rows_truncated=int(rec.get("rows_truncated") or 0),
            rows_reused=int(rec.get("rows_reused") or 0),
            chunks_total=int(rec["chunks_total"]),
            chunks_done=int(rec["chunks_done"]), chunks_failed=int(rec["chunks_failed"]),
            created_at=float(rec["created_at"]), started_at=_float(rec.get("started_at")),
            finished_at=_float(rec.get("finished_at")), output_dir=rec["output_dir"], error=rec.get("error") or None,
            dtype=rec.get("dtype") or None, exact_batches=int(rec.get("exact_batches") or 0),
        )

    def fields(self, job_id: str, *names: str) -> list[str | None]:
        """Some fields of the job record (None for a missing field, or when the record is gone)."""
        return self._r.hmget(Keys.job(job_id), list(names))

    def counted(self, job_id: str) -> set[int]:
        """Indexes of the chunks counted as finished."""
        return {int(i) for i in self._r.smembers(Keys.done(job_id))}

    def ping(self) -> bool:
        """Whether Redis answers."""
        return bool(self._r.ping())

    def chunk_states(self, job_id: str) -> dict[int, dict[str, Any]]:
        """Chunk index -> last recorded state of that chunk."""
        raw = self._r.hgetall(Keys.chunks(job_id))
        return {int(k): json.loads(v) for k, v in raw.items() if not k.startswith("attempts:")}

    def job_ids(self, limit: int = 100) -> list[str]:
        """Newest first; index entries whose record expired are dropped on the way."""
        ids = self._r.zrevrange(Keys.jobs, 0, limit - 1)
        with self._r.pipeline() as p:
            for job_id in ids:
                p.exists(Keys.job(job_id))
            alive = p.execute()
        gone = [j for j, ok in zip(ids, alive, strict=True) if not ok]
        if gone:
            self._r.zrem(Keys.jobs, *gone)
        return [j for j, ok in zip(ids, alive, strict=True) if ok]

    def transition(self, job_id: str, new: JobState, *, allowed_from: tuple[str, ...] = OPEN_STATES,
                   time_field: str = "", **fields: Any) -> bool:
        """Move the job to ``new`` if it is in one of ``allowed_from``; set ``fields`` when it moved.

        Only :mod:`hfqueue.lifecycle` calls this: it writes the manifest and tells the hooks after each move."""
        return move(self._transition, Keys.job(job_id), new.value, allowed_from, time_field, **fields)

    def chunk_started(self, job_id: str, index: int, worker: str) -> int:
        """Record that a chunk started; return its attempt number (1 for the first delivery)."""
        with self._r.pipeline() as p:
            p.hincrby(Keys.chunks(job_id), f"attempts:{index}", 1)
            p.hset(Keys.chunks(job_id), str(index),
                   json.dumps({"state": "running", "worker": worker, "started_at": time.time()}))
            p.expire(Keys.chunks(job_id), self.ttl)
            attempt, *_ = p.execute()
        return int(attempt)

    def claim(self, job_id: str, index: int, token: str, ttl: int) -> bool:
        """Whether the delivery holding ``token`` may write chunk ``index``'s outcome: the first to ask wins.

        Two deliveries of a chunk can end at once (a frozen worker wakes while another runs its chunk);
        only one writes a part, so the disk and the counts agree. The claim expires, so a winner that dies
        before writing does not block a later delivery for long.
        """
        return bool(self._r.set(Keys.claim(job_id, index), token, nx=True, ex=ttl))

    def is_counted(self, job_id: str, index: int) -> bool:
        """Whether chunk ``index`` has been counted as finished."""
        return bool(self._r.sismember(Keys.done(job_id), str(index)))

    def release(self, job_id: str, index: int) -> None:
        """Give a claim up (its outcome could not be written)."""
        self._r.delete(Keys.claim(job_id, index))

    def chunk_finished(self, job_id: str, index: int, *, rows_ok: int, rows_failed: int,
                       info: dict[str, Any], failed: bool = False, rows_truncated: int = 0,
                       rows_reused: int = 0) -> int:
        """Count a finished chunk once; return chunks finished so far, -1 if already counted, -2 if no job.

        ``rows_truncated``: of ``rows_ok``, the rows cut to the model's input limit; ``rows_reused``: of ``rows_ok``,
        the rows copied from the result cache."""
        keys = [Keys.job(job_id), Keys.done(job_id), Keys.chunks(job_id)]
        args = [index, rows_ok, rows_failed, json.dumps(info), self.ttl, int(failed), rows_truncated, rows_reused]
        finished = int(self._finish(keys=keys, args=args))
        if finished >= 0:
            self.notify(job_id, f"chunk {index}")
        return finished

    def notify(self, job_id: str, event: str) -> None:
        """Wake the job's waiters (see :meth:`events`)."""
        self._r.publish(Keys.events(job_id), event)

    def events(self, job_id: str) -> redis.client.PubSub:
        """A pub/sub subscription to the job's events (state changes, finished chunks), for waiters to wake on."""
        pubsub = self._r.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(Keys.events(job_id))
        return pubsub

    def add(self, job_id: str, name: str, amount: int) -> None:
        """Add ``amount`` to a counter field of the job record."""
        self._r.hincrby(Keys.job(job_id), name, amount)

    def set_fields(self, job_id: str, **fields: Any) -> None:
        """Set plain fields of the job record (e.g. the resolved model revision)."""
        self._r.hset(Keys.job(job_id), mapping={k: encode(v) for k, v in fields.items()})


def encode(value: Any) -> str | int | float:
    """A value as a Redis hash field holds it: dicts and lists as JSON, None as the empty string."""
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    if value is None:
        return ""
    return value if isinstance(value, (str, int, float)) else str(value)


def _float(value: str | None) -> float | None:
    return float(value) if value else None


def move(script: Script, key: str, new: str, allowed_from: tuple[str, ...], time_field: str = "",
         **fields: Any) -> bool:
    """Run the registered :data:`TRANSITION_LUA` ``script`` on the record hash at ``key`` (a job's, a batch's)."""
    pairs = [x for k, v in fields.items() for x in (k, encode(v))]
    return script(keys=[key], args=[new, time_field, time.time(), len(allowed_from), *allowed_from, *pairs]) == 1
