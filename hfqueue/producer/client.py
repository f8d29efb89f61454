"""The Python API: ``Client`` submits jobs and finds them again; ``Job`` follows one job."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
from pydantic import ValidationError

from hfqueue.core.config import Settings, load_settings
from hfqueue.core.jobs import JobSpec, JobState, JobStatus, model_fields
from hfqueue.errors import (
    BrokerUnavailableError,
    HfqError,
    InvalidSpecError,
    JobCancelledError,
    JobFailedError,
    WaitTimeoutError,
)
from hfqueue.lifecycle.manifest import sync_manifest
from hfqueue.monitoring.flower import describe_chunk
from hfqueue.producer.planner import Plan, messages, plan_job
from hfqueue.sinks.local import INPUTS, MANIFEST, error_files, part_files, write_inputs
from hfqueue.state import presence
from hfqueue.state.broker import CHUNK_TASK, broker_url, make_celery, redis_client
from hfqueue.state.keys import Keys
from hfqueue.state.presence import WorkerInfo
from hfqueue.state.routing import route
from hfqueue.state.store import JobStore

if TYPE_CHECKING:
    import datasets

    from hfqueue.openai_batch.handle import OpenAIBatch

logger = logging.getLogger(__name__)


class Client:
    """Submits jobs to the queue and finds them again.

    >>> client = Client()                                          # doctest: +SKIP
    >>> job = client.submit(task="feature-extraction", model="sentence-transformers/all-MiniLM-L6-v2",
    ...                     inputs=["a sentence", "another one"])  # doctest: +SKIP
    >>> job.result()["embedding"]                                  # doctest: +SKIP
    """

    def __init__(self, settings: Settings | None = None, **overrides: Any) -> None:
        self.settings = settings or load_settings(**overrides)
        self.url = broker_url(self.settings)
        self.store = JobStore(redis_client(self.url, self.settings), self.settings.job_ttl)
        self._celery = make_celery(self.settings, self.url)

    def submit(self, spec: JobSpec | dict[str, Any] | None = None, /, **fields: Any) -> "Job":
        """Check a job, write its record and enqueue its chunks; return a :class:`Job` at once.

        Give a :class:`JobSpec` (or a dict of its fields), or its fields as keyword arguments.
        Anything wrong with the spec raises :class:`InvalidSpecError` and nothing is enqueued.
        """
        return self._submit(_build_spec(spec, fields))

    def _submit(self, spec: JobSpec, record: dict[str, Any] | None = None) -> "Job":
        """:meth:`submit` of a built spec; ``record``: more fields for the job record (the batch it belongs to)."""
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
            sync_manifest(self.store, job_id)
            self._enqueue(plan, job_id)
        except Exception as exc:
            # Chunks already sent find no job record and are skipped: nothing half-enqueued runs.
            self.store.delete(job_id)
            for name in (MANIFEST, INPUTS):
                (plan.output_dir / name).unlink(missing_ok=True)
            raise BrokerUnavailableError(f"could not enqueue job {job_id}: {exc}", value=job_id) from exc
        logger.info("submitted job %s: %d rows in %d chunks", job_id, plan.rows_total, len(plan.chunks))
        return Job(self, job_id)

    def resume(self, job_id: str, output_dir: str | None = None) -> "Job":
        """Send again every chunk of a job that has no part in its output folder; return the :class:`Job`.

        When Redis lost the job (restarted without persistence, flushed, replaced), its record is
        rebuilt from the folder: ``output_dir`` names it, else it is found under the output root.
        Safe on a healthy job; a ``failed`` or ``cancelled`` job runs on from where it stopped.
        """
        from hfqueue.producer.recovery import resume

        return Job(self, resume(self, job_id, output_dir).job_id)

    def _enqueue(self, plan: Plan, job_id: str, only: set[int] | None = None) -> None:
        """Send the job's chunks (those in ``only``, when given): a small inline job's one chunk to the request
        lane, where workers batch it with other small work for the same model; every other chunk to Celery."""
        if plan.spec.inputs is not None and len(plan.chunks) == 1 and plan.rows_total <= self.settings.small_job_rows:
            message = next(messages(plan, job_id, only), None)
            if message is None:
                return
            entry = {"id": f"{job_id}:0", "inputs": message.pop("inputs"), "spec": model_fields(plan.spec),
                     "job": message, "sent_at": message["sent_at"]}
            self.store.r.rpush(Keys.requests(self.settings.queue), json.dumps(entry))
            return
        outgoing = list(messages(plan, job_id, only))
        # Workers that hold the model get the first chunks (hfqueue.state.routing); the rest go to the shared queue.
        queues = route(self.store.r, self.settings.queue, plan.spec, len(outgoing), self.settings.affinity_chunks)
        with self._celery.producer_or_acquire() as producer:
            for message, queue in zip(outgoing, queues, strict=True):
                # ignore_result: otherwise Celery subscribes this producer to a result channel per chunk, for ever.
                # argsrepr: what Flower shows instead of the message (which may carry inline rows).
                self._celery.send_task(CHUNK_TASK, args=[message], queue=queue, producer=producer,
                                       ignore_result=True, argsrepr=describe_chunk(message, len(plan.chunks)),
                                       kwargsrepr="{}")

    def submit_openai_batch(self, path: str | Path, *, endpoint: str | None = None,
                            metadata: dict[str, str] | None = None, priority: str = "normal",
                            completion_window: str = "24h") -> "OpenAIBatch":
        """Run an OpenAI Batch API input file (JSONL of ``custom_id``/``method``/``url``/``body`` lines) on local
        models; return an :class:`~hfqueue.openai_batch.handle.OpenAIBatch` at once.

        ``body.model`` names a Hugging Face model (Hub id or local folder). Every line is checked; a bad one
        goes to the batch's ``errors.jsonl`` with its line number and the rest run. ``endpoint``, when given,
        is the only url lines may name (as in OpenAI's API); else each line's url counts.
        """
        from hfqueue.openai_batch import batch
        from hfqueue.openai_batch.handle import OpenAIBatch

        path = Path(path)
        try:
            with path.open("rb") as fh:  # bytes: a line that is not UTF-8 is rejected by its number
                batch_id = batch.submit(self, fh, input_file=str(path), endpoint=endpoint, metadata=metadata,
                                        priority=priority, completion_window=completion_window)
        except OSError as exc:
            raise InvalidSpecError(f"cannot read the batch file {str(path)!r}: {exc.strerror or exc}",
                                   value=str(path)) from None
        return OpenAIBatch(self, batch_id)

    def openai_batch(self, batch_id: str) -> "OpenAIBatch":
        """Reattach to an OpenAI batch by id; :class:`JobNotFoundError` when Redis has no such batch."""
        from hfqueue.openai_batch.batch import status
        from hfqueue.openai_batch.handle import OpenAIBatch

        status(self.store, batch_id)
        return OpenAIBatch(self, batch_id)

    def infer(self, task: str, inputs: list[Any], model: str | None = None, *, options: dict[str, Any] | None = None,
              timeout: float = 30.0, **fields: Any) -> list[dict[str, Any]]:
        """Run a handful of rows now and return one output dict per input, in order (no job, no files).

        Requests from many callers for the same model and options share forward passes on the worker
        (see ``HFQ_MAX_WAIT_MS``). Raises :class:`InvalidSpecError` for bad input,
        :class:`WaitTimeoutError` when no worker answers in ``timeout`` seconds, and :class:`HfqError`
        naming the rows that failed.
        """
        spec = _build_spec(None, {"task": task, "model": model, "inputs": inputs, "options": options or {}, **fields})
        request_id = secrets.token_hex(8)
        request = json.dumps({"id": request_id, "inputs": spec.inputs, "spec": model_fields(spec),
                              "sent_at": time.time(), "expires_at": time.time() + timeout})
        self.store.r.rpush(Keys.requests(self.settings.queue), request)
        reply = self.store.r.blpop([Keys.reply(request_id)], timeout=max(1, math.ceil(timeout)))
        if reply is None:
            # Take the request back if no worker has it yet, so it does not run after the caller gave up.
            self.store.r.lrem(Keys.requests(self.settings.queue), 1, request)
            raise WaitTimeoutError(f"no worker answered within {timeout} s (is `hfq worker` running on queue "
                                   f"{self.settings.queue!r}?)", value=request_id)
        answer = json.loads(reply[1])
        if answer["errors"]:
            first = min(answer["errors"], key=int)
            kind, message = answer["errors"][first]
            raise HfqError(f"{len(answer['errors'])} of {len(inputs)} inputs failed; input {first}: {kind}: {message}",
                           value=sorted(int(i) for i in answer["errors"]))
        return answer["outputs"]

    async def ainfer(self, task: str, inputs: list[Any], model: str | None = None, **kwargs: Any
                     ) -> list[dict[str, Any]]:
        """:meth:`infer` for asyncio code: the blocking wait runs in a worker thread."""
        return await asyncio.to_thread(self.infer, task, inputs, model, **kwargs)

    def job(self, job_id: str) -> "Job":
        """Reattach to a job by id (from any process); :class:`JobNotFoundError` if Redis has no such job."""
        self.store.get(job_id)
        return Job(self, job_id)

    def jobs(self, limit: int = 100) -> list[JobStatus]:
        """Status of the newest ``limit`` jobs, newest first."""
        out = []
        for job_id in self.store.job_ids(limit):
            try:
                out.append(self.store.status(job_id))
            except HfqError:  # expired between listing and reading
                continue
        return out

    def workers(self, timeout: float = 1.0) -> list[str]:
        """Names of the workers that answer a ping within ``timeout`` seconds."""
        try:
            replies = self._celery.control.ping(timeout=timeout) or []
        except (redis.ConnectionError, OSError):
            # A pooled connection to a Redis that restarted at the same address fails once; the pool then
            # has it replaced, so one more try goes through.
            replies = self._celery.control.ping(timeout=timeout) or []
        return sorted(name for reply in replies for name in reply)

    def live_workers(self) -> list[WorkerInfo]:
        """The model-serving processes alive now, with device, resident models, memory and metrics address."""
        return presence.live(self.store.r)

    def close(self) -> None:
        """Release Redis connections."""
        self.store.r.close()
        self._celery.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Job:
    """A submitted job. Cheap to create; every method asks Redis or the output folder afresh."""

    def __init__(self, client: Client, job_id: str) -> None:
        self.client = client
        self.id = job_id

    def __repr__(self) -> str:
        return f"Job({self.id!r})"

    @property
    def output_dir(self) -> Path:
        """The folder holding the job's parts and manifest."""
        return Path(self.client.store.get(self.id)["output_dir"])

    def status(self) -> JobStatus:
        """State, rows total/done/failed, chunks, rows per second, ETA."""
        return self.client.store.status(self.id)

    def chunks(self) -> dict[int, dict[str, Any]]:
        """Per-chunk state (running, done, failed), worker, attempts, timings, error."""
        return self.client.store.chunk_states(self.id)

    def cancel(self) -> JobStatus:
        """Stop the job: queued chunks never run, a running chunk stops at its next batch."""
        if self.client.store.transition(self.id, JobState.CANCELLED, time_field="finished_at",
                                        error="cancelled by user"):
            sync_manifest(self.client.store, self.id)
        return self.status()

    def wait(self, timeout: float | None = None, *, progress: bool = False, poll_interval: float = 1.0) -> JobStatus:
        """Block until the job ends; return its final status.

        Wakes on the job's events (Redis pub/sub: state changes, finished chunks) and re-reads the
        status at least every ``poll_interval`` seconds besides.

        Raises :class:`JobFailedError` (failed), :class:`JobCancelledError` (cancelled) or
        :class:`WaitTimeoutError` when ``timeout`` seconds pass first. A job that ends
        ``completed_with_errors`` returns normally: check ``rows_failed``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = _progress_bar(self.status().rows_total, self.id) if progress else None
        # Subscribed before the first read, so no event between a read and the next pause is missed; the
        # poll is the fallback when the subscription breaks (a Redis restart).
        events = self.client.store.events(self.id)
        try:
            while True:
                status = self.status()
                if bar is not None:
                    bar.n = status.rows_done + status.rows_failed
                    bar.set_postfix(state=status.state.value, rows_s=f"{status.rows_per_second:.1f}", refresh=True)
                if status.state.is_final:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    raise WaitTimeoutError(
                        f"job {self.id} still {status.state.value} after {timeout} s "
                        f"({status.rows_done}/{status.rows_total} rows); it keeps running", value=self.id)
                pause = poll_interval if deadline is None else max(0.0, min(poll_interval, deadline - time.monotonic()))
                events = _pause(events, pause)
        finally:
            if events is not None:
                events.close()
            if bar is not None:
                bar.close()
        if status.state == JobState.CANCELLED:
            raise JobCancelledError(f"job {self.id} was cancelled", value=self.id, status=status)
        if status.state == JobState.FAILED:
            raise JobFailedError(f"job {self.id} failed: {status.error}", value=self.id, status=status)
        return status

    def result(self, timeout: float | None = None) -> "datasets.Dataset":
        """The results as a ``datasets.Dataset``, one row per input row, in input order (waits first).

        Columns: ``row_idx``, the input columns that hold text, and the task's output columns. Rows
        that failed are absent; :meth:`errors` lists them with the reason.
        """
        import datasets

        self.wait(timeout)
        parts = [str(p) for p in part_files(self.output_dir)]
        if not parts:
            raise HfqError(f"job {self.id} finished without any result part in {self.output_dir}", value=self.id)
        datasets.disable_progress_bars()
        return datasets.load_dataset("parquet", data_files=parts, split="train")


    def errors(self) -> "datasets.Dataset":
        """The rows that failed, as a ``datasets.Dataset`` of ``row_idx``, ``error_type`` and ``error`` (empty when none)."""
        import datasets

        files = [str(p) for p in error_files(self.output_dir)]
        if not files:
            return datasets.Dataset.from_dict({"row_idx": [], "error_type": [], "error": []},
                                              features=datasets.Features({"row_idx": datasets.Value("int64"),
                                                                          "error_type": datasets.Value("string"),
                                                                          "error": datasets.Value("string")}))
        datasets.disable_progress_bars()
        return datasets.load_dataset("parquet", data_files=files, split="train")


def _build_spec(spec: JobSpec | dict[str, Any] | None, fields: dict[str, Any]) -> JobSpec:
    if isinstance(spec, JobSpec):
        if fields:
            spec = spec.model_copy(update=fields)
            return _build_spec(spec.model_dump(), {})
        return spec
    try:
        return JobSpec(**{**(spec or {}), **fields})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'spec'}: {e['msg'].removeprefix('Value error, ')}"
                             for e in exc.errors())
        raise InvalidSpecError(f"invalid job spec: {problems}", value=fields or spec) from None


def _pause(events: Any, seconds: float) -> Any:
    """Wait up to ``seconds``, returning early when the job has news; the subscription, or None once it broke."""
    if events is not None:
        try:
            events.get_message(timeout=seconds)
            return events
        except Exception:  # noqa: BLE001 - a broken subscription: poll from now on
            logger.debug("job events subscription lost; polling", exc_info=True)
            events.close()
    time.sleep(seconds)
    return None


def _progress_bar(total: int, job_id: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"job {job_id}", unit="row", dynamic_ncols=True)
