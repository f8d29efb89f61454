"""``OpenAIBatch``: a submitted OpenAI batch file, followed from any process."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from hfqueue.errors import WaitTimeoutError
from hfqueue.lifecycle.batches import BatchState
from hfqueue.lifecycle.batches import state_of as batch_state
from hfqueue.openai_batch import batch, files
from hfqueue.producer.client import Client, Job


class OpenAIBatch:
    """A batch of OpenAI-format requests running as hfqueue jobs; every method asks Redis afresh.

    >>> b = client.submit_openai_batch("requests.jsonl")    # doctest: +SKIP
    >>> b.wait()["request_counts"]                          # doctest: +SKIP
    {'total': 3, 'completed': 2, 'failed': 1}
    >>> b.output_file.read_text().splitlines()[0]           # doctest: +SKIP
    """

    def __init__(self, client: Client, batch_id: str) -> None:
        self.client = client
        self.id = batch_id
        self._plan: files.Plan | None = None  # read once: it never changes after submit

    def __repr__(self) -> str:
        return f"OpenAIBatch({self.id!r})"

    def status(self) -> dict[str, Any]:
        """The batch as OpenAI's Batch object: ``status`` (validating, in_progress, finalizing, completed, failed,
        cancelling, cancelled), ``request_counts``, the times, and the output and error files' paths."""
        plan = self._plan_once()
        state = batch_state(batch.batch_store(self.client), self.id)
        if state is not None and state.is_running:
            # Writing the files may have died with its process; whoever looks next finishes it.
            batch.job_ended(self.client, self.id, plan)
        return batch.status(self.client, self.id, plan)

    def wait(self, timeout: float | None = None, poll_interval: float = 1.0) -> dict[str, Any]:
        """Block until the batch is completed, failed or cancelled; return its final object.

        Raises :class:`WaitTimeoutError` when ``timeout`` seconds pass first (the batch goes on).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            obj = self.status()
            if BatchState(obj["status"]).is_final:
                return obj
            if deadline is not None and time.monotonic() >= deadline:
                counts = obj["request_counts"]
                raise WaitTimeoutError(f"batch {self.id} still {obj['status']} after {timeout} s "
                                       f"({counts['completed']}/{counts['total']} requests); it keeps running",
                                       value=self.id)
            time.sleep(poll_interval if deadline is None else max(0.0, min(poll_interval,
                                                                           deadline - time.monotonic())))

    def cancel(self) -> dict[str, Any]:
        """Cancel the batch: its jobs stop, requests that had not run go to the error file as ``batch_cancelled``."""
        return batch.cancel(self.client, self.id)

    def jobs(self) -> list[Job]:
        """The hfqueue jobs running the batch, one per (endpoint, model, generation options) group."""
        return [Job(self.client, job_id) for job_id in self._plan_once().by_job]

    @property
    def folder(self) -> Path:
        """The batch's folder under the output root."""
        return self.client.settings.output_root.expanduser().resolve() / self.id

    @property
    def output_file(self) -> Path:
        """``output.jsonl``: one OpenAI response line per request that ran (written when the batch ends)."""
        return self.folder / files.OUTPUT

    @property
    def error_file(self) -> Path:
        """``errors.jsonl``: rejected lines (with their line numbers) and failed or cancelled requests."""
        return self.folder / files.ERRORS

    def _plan_once(self) -> files.Plan:
        if self._plan is not None:
            return self._plan
        if not files.has_plan(self.folder):
            return files.Plan()  # still validating: not kept, the plan is written before the batch runs
        self._plan = files.read_plan(self.folder)
        return self._plan
