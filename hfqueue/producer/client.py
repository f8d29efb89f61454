"""The Python API: ``Client`` submits jobs and finds them again; ``Job`` follows one job."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
from pydantic import ValidationError

from hfqueue.core.config import Settings, load_settings
from hfqueue.core.hooks import Hooks
from hfqueue.core.jobs import JobSpec, JobState, JobStatus, model_fields
from hfqueue.core.messages import LaneEntry
from hfqueue.errors import HfqError, InvalidSpecError, JobCancelledError, JobFailedError, WaitTimeoutError
from hfqueue.lifecycle import jobs as lifecycle
from hfqueue.producer import recovery
from hfqueue.producer.sender import Sender
from hfqueue.sinks.local import error_files, part_files
from hfqueue.state import lane, presence
from hfqueue.state.broker import broker_url, make_celery, redis_client
from hfqueue.state.presence import WorkerInfo
from hfqueue.state.store import JobStore

if TYPE_CHECKING:
    import datasets

logger = logging.getLogger(__name__)


class Client:
    """Submits jobs to the queue and finds them again.

    >>> client = Client()                                          # doctest: +SKIP
    >>> job = client.submit(task="feature-extraction", model="sentence-transformers/all-MiniLM-L6-v2",
    ...                     inputs=["a sentence", "another one"])  # doctest: +SKIP
    >>> job.result()["embedding"]                                  # doctest: +SKIP
    """

    def __init__(self, settings: Settings | None = None, *, hooks: Hooks | None = None, **overrides: Any) -> None:
        self.settings = settings or load_settings(**overrides)
        self.url = broker_url(self.settings)
        self.hooks = hooks or Hooks()  # told when a job this client moves ends (hfqueue.Client adds OpenAI batches)
        self.redis = redis_client(self.url, self.settings)
        self.store = JobStore(self.redis, self.settings.job_ttl)
        self.celery = make_celery(self.settings, self.url)
        self.sender = Sender(self.settings, self.store, self.redis, self.celery)

    def submit(self, spec: JobSpec | dict[str, Any] | None = None, /, **fields: Any) -> "Job":
        """Check a job, write its record and enqueue its chunks; return a :class:`Job` at once.

        Give a :class:`JobSpec` (or a dict of its fields), or its fields as keyword arguments.
        Anything wrong with the spec raises :class:`InvalidSpecError` and nothing is enqueued.
        """
        return Job(self, self.sender.submit(build_spec(spec, fields)))

    def resume(self, job_id: str, output_dir: str | None = None) -> "Job":
        """Send again every chunk of a job that has no part in its output folder; return the :class:`Job`.

        When Redis lost the job (restarted without persistence, flushed, replaced), its record is
        rebuilt from the folder: ``output_dir`` names it, else it is found under the output root.
        Safe on a healthy job; a ``failed`` or ``cancelled`` job runs on from where it stopped.
        """
        return Job(self, recovery.resume(self.sender, self.hooks, job_id, output_dir).job_id)

    def infer(self, task: str, inputs: list[Any], model: str | None = None, *, options: dict[str, Any] | None = None,
              timeout: float = 30.0, **fields: Any) -> list[dict[str, Any]]:
        """Run a handful of rows now and return one output dict per input, in order (no job, no files).

        Requests from many callers for the same model and options share forward passes on the worker
        (see ``HFQ_MAX_WAIT_MS``). Raises :class:`InvalidSpecError` for bad input,
        :class:`WaitTimeoutError` when no worker answers in ``timeout`` seconds, and :class:`HfqError`
        naming the rows that failed.
        """
        spec = build_spec(None, {"task": task, "model": model, "inputs": inputs, "options": options or {}, **fields})
        entry = LaneEntry(id=secrets.token_hex(8), inputs=spec.inputs or [], spec=model_fields(spec),
                          sent_at=time.time(), expires_at=time.time() + timeout)
        raw = lane.push(self.redis, self.settings.queue, entry)
        answer = lane.wait_reply(self.redis, entry.id, timeout)
        if answer is None:
            # Take the request back if no worker has it yet, so it does not run after the caller gave up.
            lane.withdraw(self.redis, self.settings.queue, raw)
            raise WaitTimeoutError(f"no worker answered within {timeout} s (is `hfq worker` running on queue "
                                   f"{self.settings.queue!r}?)", value=entry.id)
        if answer.errors:
            first = min(answer.errors)
            kind, message = answer.errors[first]
            raise HfqError(f"{len(answer.errors)} of {len(inputs)} inputs failed; input {first}: {kind}: {message}",
                           value=sorted(answer.errors))
        return answer.outputs

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
            replies = self.celery.control.ping(timeout=timeout) or []
        except (redis.ConnectionError, OSError):
            # A pooled connection to a Redis that restarted at the same address fails once; the pool then
            # has it replaced, so one more try goes through.
            replies = self.celery.control.ping(timeout=timeout) or []
        return sorted(name for reply in replies for name in reply)

    def live_workers(self) -> list[WorkerInfo]:
        """The model-serving processes alive now, with device, resident models, memory and metrics address."""
        return presence.live(self.redis)

    def close(self) -> None:
        """Release Redis connections."""
        self.redis.close()
        self.celery.close()

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
        lifecycle.cancel(self.client.store, self.id, self.client.hooks)
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
        self._manifest_caught_up(status.state)
        if status.state == JobState.CANCELLED:
            raise JobCancelledError(f"job {self.id} was cancelled", value=self.id, status=status)
        if status.state == JobState.FAILED:
            raise JobFailedError(f"job {self.id} failed: {status.error}", value=self.id, status=status)
        return status

    def _manifest_caught_up(self, state: JobState, within: float = 10.0) -> None:
        """Return once the job's manifest holds ``state`` (its writer records so in Redis after writing it): the move
        shows before the manifest is rewritten, and a caller may read manifest.json next. Gives up after ``within``
        seconds (a writer that died in between: ``hfq resume`` writes it)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            try:
                written = self.client.store.get(self.id).get("manifest_state")
            except HfqError:  # the record is gone (deleted, expired): nothing left to wait for
                return
            if written is None or written == state.value:  # None: a record from before manifests were recorded
                return
            time.sleep(0.02)

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


def build_spec(spec: JobSpec | dict[str, Any] | None, fields: dict[str, Any]) -> JobSpec:
    """A :class:`JobSpec` from a spec or a dict and keyword fields; :class:`InvalidSpecError` naming every problem."""
    if isinstance(spec, JobSpec):
        if fields:
            spec = spec.model_copy(update=fields)
            return build_spec(spec.model_dump(), {})
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
