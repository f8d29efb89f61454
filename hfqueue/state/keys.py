"""Every Redis key hfqueue writes, in one place, grouped by the subsystem that owns it."""

from __future__ import annotations

KEY_PREFIX = "hfq"


class Keys:
    """Every Redis key hfqueue writes, in one place. Each has a TTL (job keys) or an owner that trims it."""

    # --- Jobs (hfqueue.state.store, hfqueue.lifecycle)

    jobs = f"{KEY_PREFIX}:jobs"  # sorted set job id -> created time; entries of expired jobs are pruned

    @staticmethod
    def job(job_id: str) -> str:
        """Hash: the job record (spec, plan, counters, state)."""
        return f"{KEY_PREFIX}:job:{job_id}"

    @staticmethod
    def chunks(job_id: str) -> str:
        """Hash: chunk index -> JSON of the chunk's state, attempts, counts, timings, error."""
        return f"{KEY_PREFIX}:job:{job_id}:chunks"

    @staticmethod
    def done(job_id: str) -> str:
        """Set: indexes of chunks counted as finished (so a re-delivered chunk is counted once)."""
        return f"{KEY_PREFIX}:job:{job_id}:done"

    @staticmethod
    def claim(job_id: str, index: int) -> str:
        """String with a short TTL: which delivery of a chunk writes its outcome (two may finish at once)."""
        return f"{KEY_PREFIX}:job:{job_id}:claim:{index}"

    @staticmethod
    def events(job_id: str) -> str:
        """Pub/sub channel (no storage): a job's state changes and finished chunks, so waiters need not poll."""
        return f"{KEY_PREFIX}:job:{job_id}:events"

    # --- The request lane (hfqueue.state.lane)

    @staticmethod
    def requests(queue: str) -> str:
        """List: the request lane of ``queue``: pending ``client.infer`` requests and small jobs."""
        return f"{KEY_PREFIX}:requests:{queue}"

    @staticmethod
    def processing(queue: str, consumer: str) -> str:
        """List: lane entries a serving process has taken and not yet answered (swept back if it dies; expires
        HFQ_JOB_TTL after its consumer's last heartbeat)."""
        return f"{KEY_PREFIX}:requests:{queue}:processing:{consumer}"

    @staticmethod
    def consumers(queue: str) -> str:
        """Set: serving processes that may hold lane entries (a sweeper removes the dead ones; expires
        HFQ_JOB_TTL after the queue's last heartbeat)."""
        return f"{KEY_PREFIX}:requests:{queue}:consumers"

    @staticmethod
    def alive(consumer: str) -> str:
        """String with a short TTL: a serving process's heartbeat."""
        return f"{KEY_PREFIX}:consumer:{consumer}"

    @staticmethod
    def reply(request_id: str) -> str:
        """List: the one reply to a ``client.infer`` request (expires soon after it is written)."""
        return f"{KEY_PREFIX}:reply:{request_id}"

    # --- Workers: presence and model affinity (hfqueue.state.presence, hfqueue.state.routing)

    @staticmethod
    def worker(name: str) -> str:
        """String with a short TTL: a live worker's record (device, models, memory; see hfqueue.state.presence)."""
        return f"{KEY_PREFIX}:worker:{name}"

    workers = f"{KEY_PREFIX}:workers"  # sorted set worker name -> last heartbeat; pruned by every heartbeat

    @staticmethod
    def affinity(queue: str) -> str:
        """Sorted set: workers of ``queue`` with chunk queues of their own -> last heartbeat (see hfqueue.state.routing;
        dead ones are swept and dropped by the live ones; expires HFQ_JOB_TTL after the last heartbeat)."""
        return f"{KEY_PREFIX}:affinity:{queue}"

    # --- OpenAI batches (hfqueue.state.batches)

    @staticmethod
    def batch(batch_id: str) -> str:
        """Hash: an OpenAI batch's record (state, times, its jobs, request counts; see hfqueue.openai_batch)."""
        return f"{KEY_PREFIX}:batch:{batch_id}"

    batches = f"{KEY_PREFIX}:batches"  # sorted set batch id -> created time; entries of expired batches are pruned

    @staticmethod
    def batch_claim(batch_id: str) -> str:
        """String with a TTL: who is writing a batch's output files (so one process does it)."""
        return f"{KEY_PREFIX}:batch:{batch_id}:claim"

    # --- API key owners (hfqueue.state.owners)

    @staticmethod
    def owned(owner: str, kind: str) -> str:
        """Sorted set: the jobs, batches or files (``kind``) an API key's name owns -> created time (entries older
        than HFQ_JOB_TTL are pruned on each add; the key expires HFQ_JOB_TTL after it)."""
        return f"{KEY_PREFIX}:owner:{owner}:{kind}"

    # --- The embedded redis-server (hfqueue.cli.revival)

    @staticmethod
    def reconciled(run_id: str) -> str:
        """String with a TTL: one process has resumed the open jobs after redis-server run ``run_id`` started."""
        return f"{KEY_PREFIX}:reconciled:{run_id}"
