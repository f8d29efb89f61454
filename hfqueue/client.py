"""``hfqueue.Client``: the job client with everything wired in — OpenAI batches, and the hooks they need.

:class:`~hfqueue.producer.client.Client` submits and follows jobs; this one adds OpenAI batch files and
passes the jobs it moves (a cancel, a resume that finishes a job) to :class:`BatchHooks`, so a batch whose
last job ends that way writes its files at once. It sits above the integrations, like ``hfq`` and the
HTTP API, because choosing which hooks run is theirs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hfqueue.core.config import Settings
from hfqueue.core.hooks import Hooks, SafeHooks
from hfqueue.errors import InvalidSpecError
from hfqueue.openai_batch import batch
from hfqueue.openai_batch.handle import OpenAIBatch
from hfqueue.openai_batch.hooks import BatchHooks
from hfqueue.producer import client as producer


class Client(producer.Client):
    """Submits jobs and OpenAI batch files, and finds them again (see :class:`hfqueue.producer.client.Client`).

    ``hooks``: more hooks to tell when a job this client moves ends, besides the OpenAI batches'.
    """

    def __init__(self, settings: Settings | None = None, *, hooks: Hooks | None = None, **overrides: Any) -> None:
        batch_hooks = BatchHooks(lambda: self)
        super().__init__(settings, hooks=SafeHooks([batch_hooks, *([hooks] if hooks else [])]), **overrides)

    def submit_openai_batch(self, path: str | Path, *, endpoint: str | None = None,
                            metadata: dict[str, str] | None = None, priority: str = "normal",
                            completion_window: str = "24h") -> OpenAIBatch:
        """Run an OpenAI Batch API input file (JSONL of ``custom_id``/``method``/``url``/``body`` lines) on local
        models; return an :class:`~hfqueue.openai_batch.handle.OpenAIBatch` at once.

        ``body.model`` names a Hugging Face model (Hub id or local folder). Every line is checked; a bad one
        goes to the batch's ``errors.jsonl`` with its line number and the rest run. ``endpoint``, when given,
        is the only url lines may name (as in OpenAI's API); else each line's url counts.
        """
        path = Path(path)
        try:
            with path.open("rb") as fh:  # bytes: a line that is not UTF-8 is rejected by its number
                batch_id = batch.submit(self, fh, input_file=str(path), endpoint=endpoint, metadata=metadata,
                                        priority=priority, completion_window=completion_window)
        except OSError as exc:
            raise InvalidSpecError(f"cannot read the batch file {str(path)!r}: {exc.strerror or exc}",
                                   value=str(path)) from None
        return OpenAIBatch(self, batch_id)

    def openai_batch(self, batch_id: str) -> OpenAIBatch:
        """Reattach to an OpenAI batch by id; :class:`JobNotFoundError` when Redis has no such batch."""
        batch.status(self, batch_id)
        return OpenAIBatch(self, batch_id)
