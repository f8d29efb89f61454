"""Running an adapter over a chunk's rows: batch by length, run, restore input order."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hfqueue.errors import HfqError
from hfqueue.tasks.base import LoadedModel, TaskAdapter
from hfqueue.worker.batching import plan_batches


class BatchStopped(HfqError):
    """``should_stop`` said to stop between two batches (the job was cancelled or failed)."""


def infer_rows(adapter: TaskAdapter, loaded: LoadedModel, rows: list[Any], options: dict[str, Any], *,
               max_batch_size: int, max_batch_tokens: int, max_length: int,
               should_stop: Callable[[], bool] = lambda: False) -> list[dict[str, Any]]:
    """One output dict per row, in the order of ``rows``.

    Raises :class:`BatchStopped` when ``should_stop()`` turns true at a batch boundary, and
    :class:`HfqError` when the model returns a different number of outputs than it got inputs.
    """
    features = adapter.prepare(loaded, rows, options, max_length)
    lengths = [len(f["input_ids"]) for f in features]
    outputs: list[dict[str, Any] | None] = [None] * len(rows)
    for batch in plan_batches(lengths, max_batch_size, max_batch_tokens):
        if should_stop():
            raise BatchStopped("stopped at a batch boundary")
        result = adapter.forward(loaded, adapter.collate(loaded, [features[i] for i in batch]), options)
        if len(result) != len(batch):
            raise HfqError(f"task {adapter.name!r} returned {len(result)} outputs for {len(batch)} inputs")
        for i, out in zip(batch, result, strict=True):
            outputs[i] = out
    if should_stop():  # the end of the last batch is a boundary too: write nothing for a stopped job
        raise BatchStopped("stopped after the last batch")
    return outputs  # type: ignore[return-value]  # every slot was filled: plan_batches covers each row
