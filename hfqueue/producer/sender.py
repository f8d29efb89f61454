"""Sending work: a checked job's record, manifest and chunks, and the chunks of a job that resumes.

Shared by :meth:`Client.submit <hfqueue.producer.client.Client.submit>`, ``resume``
(:mod:`hfqueue.producer.recovery`) and OpenAI batches, so each sends the same way.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

import redis
from celery import Celery

from hfqueue.core.config import Settings
from hfqueue.core.jobs import JobSpec, model_fields
from hfqueue.core.messages import LaneEntry
from hfqueue.errors import BrokerUnavailableError
from hfqueue.lifecycle import jobs as lifecycle
from hfqueue.producer.planner import Plan, messages, plan_job
from hfqueue.sinks.local import INPUTS, MANIFEST, write_inputs
from hfqueue.state import lane
from hfqueue.state.broker import CHUNK_TASK
from hfqueue.state.routing import route
from hfqueue.state.store import JobStore

logger = logging.getLogger(__name__)


class Sender:
    """Writes jobs and sends their chunks, over one Redis connection and one Celery app."""

    def __init__(self, settings: Settings, store: JobStore, r: redis.Redis, celery: Celery) -> None:
        self.settings = settings
        self.store = store
        self.redis = r
        self.celery = celery

    def submit(self, spec: JobSpec, record: dict[str, Any] | None = None) -> str:
        """Plan a built spec, write its record and manifest, send its chunks; return the job id.

        ``record``: more fields for the job record (the OpenAI batch and API key it belongs to). Anything wrong
        with the spec raises before anything is written; a failed send removes what was written.
        """
        job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        plan = plan_job(spec, self.settings, job_id)
        stored_spec = spec.model_dump(mode="json", exclude={"inputs"})
        self.store.create(job_id, {
            "spec": stored_spec, "source": plan.source.model_dump(), "rows_total": plan.rows_total,
            "chunks_total": len(plan.chunks), "chunks": [c.model_dump() for c in plan.chunks],
            "output_dir": str(plan.output_dir), **(record or {}),
        })
        try:
            if spec.inputs is not None:
                write_inputs(plan.output_dir, spec.inputs)  # so `resume` can rebuild the job without Redis
            lifecycle.submitted(self.store, job_id)
            self.send(plan, job_id)
        except Exception as exc:
            # Chunks already sent find no job record and are skipped: nothing half-enqueued runs.
            self.store.delete(job_id)
            for name in (MANIFEST, INPUTS):
                (plan.output_dir / name).unlink(missing_ok=True)
            raise BrokerUnavailableError(f"could not enqueue job {job_id}: {exc}", value=job_id) from exc
        logger.info("submitted job %s: %d rows in %d chunks", job_id, plan.rows_total, len(plan.chunks))
        return job_id

    def send(self, plan: Plan, job_id: str, only: set[int] | None = None) -> None:
        """Send the job's chunks (those in ``only``, when given): a small inline job's one chunk to the request
        lane, where workers batch it with other small work for the same model; every other chunk to Celery."""
        if plan.spec.inputs is not None and len(plan.chunks) == 1 and plan.rows_total <= self.settings.small_job_rows:
            message = next(messages(plan, job_id, only), None)
            if message is None:
                return
            inputs = message.inputs or []
            entry = LaneEntry(id=f"{job_id}:0", inputs=inputs, spec=model_fields(plan.spec),
                              job=message.model_copy(update={"inputs": None}), sent_at=message.sent_at)
            lane.push(self.redis, self.settings.queue, entry)
            return
        outgoing = list(messages(plan, job_id, only))
        # Workers that hold the model get the first chunks (hfqueue.state.routing); the rest go to the shared queue.
        queues = route(self.redis, self.settings.queue, plan.spec, len(outgoing), self.settings.affinity_chunks)
        with self.celery.producer_or_acquire() as producer:
            for message, queue in zip(outgoing, queues, strict=True):
                # ignore_result: otherwise Celery subscribes this producer to a result channel per chunk, for ever.
                # argsrepr: what Flower shows instead of the message (which may carry inline rows).
                self.celery.send_task(CHUNK_TASK, args=[message.model_dump(mode="json")], queue=queue,
                                      producer=producer, ignore_result=True,
                                      argsrepr=message.describe(len(plan.chunks)), kwargsrepr="{}")
