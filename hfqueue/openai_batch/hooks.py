"""OpenAI batches follow their jobs through the hooks: the last job of a batch to end writes its files."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from hfqueue.core.hooks import Hooks
from hfqueue.openai_batch import batch
from hfqueue.producer.client import Client

logger = logging.getLogger(__name__)


class BatchHooks(Hooks):
    """Hands each ended job that belongs to an OpenAI batch to :func:`~hfqueue.openai_batch.batch.job_ended`.

    ``client``: a callable returning the client to do it with (built on first use, so a worker's hooks can be
    made before its serving process connects).
    """

    def __init__(self, client: Callable[[], Client]) -> None:
        self._make_client = client
        self._client: Client | None = None

    def job_ended(self, job_id: str, record: Mapping[str, str]) -> None:
        """Once all of a batch's jobs have ended, write its output files and end it."""
        batch_id = record.get("batch")
        if not batch_id:
            return
        if self._client is None:
            self._client = self._make_client()
        try:
            batch.job_ended(self._client, batch_id)
        except Exception:  # the job's own record is safe; the batch's next status() writes its files
            logger.exception("job %s ended, but writing the output files of its batch %s failed", job_id, batch_id)
