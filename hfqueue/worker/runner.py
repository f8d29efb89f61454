"""Running an adapter over a chunk's rows: batch by length, run, isolate bad rows, restore input order.

A row that cannot be prepared (it does not tokenize or decode) or whose batch raises is not allowed
to take the chunk down with it: a failing batch is split in halves and retried until the failing rows
stand alone, and each of those is reported with its error while every other row gets its output.
Errors that concern the whole job (the model does not fit the task) are raised, not isolated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hfqueue.errors import HfqError, ModelLoadError
from hfqueue.tasks.base import LoadedModel, TaskAdapter
from hfqueue.worker.batching import plan_batches


class BatchStopped(HfqError):
    """``should_stop`` said to stop between two batches (the job was cancelled or failed)."""


@dataclass
class RowResults:
    """One slot per input row: its output dict, or None with the reason in ``errors``."""

    outputs: list[dict[str, Any] | None]
    errors: dict[int, str] = field(default_factory=dict)


def infer_rows(adapter: TaskAdapter, loaded: LoadedModel, rows: list[Any], options: dict[str, Any], *,
               max_batch_size: int, max_batch_tokens: int, max_length: int,
               should_stop: Callable[[], bool] = lambda: False) -> RowResults:
    """Outputs for ``rows`` in their order, and the error of each row that failed.

    Raises :class:`BatchStopped` when ``should_stop()`` turns true at a batch boundary, and
    :class:`ModelLoadError` when the adapter finds the model unfit for the job.
    """
    results = RowResults([None] * len(rows))
    features = _prepare(adapter, loaded, rows, options, max_length, results.errors)
    ok = [i for i in range(len(rows)) if i not in results.errors]
    for batch in plan_batches([adapter.length(features[i]) for i in ok], max_batch_size, max_batch_tokens):
        if should_stop():
            raise BatchStopped("stopped at a batch boundary")
        _run(adapter, loaded, [ok[j] for j in batch], features, options, results)
    if should_stop():  # the end of the last batch is a boundary too: write nothing for a stopped job
        raise BatchStopped("stopped after the last batch")
    return results


def _prepare(adapter: TaskAdapter, loaded: LoadedModel, rows: list[Any], options: dict[str, Any],
             max_length: int, errors: dict[int, str]) -> list[Any]:
    try:
        return adapter.prepare(loaded, rows, options, max_length)
    except ModelLoadError:
        raise
    except Exception:  # noqa: BLE001 - some row is bad: prepare them one by one to find which
        features: list[Any] = [None] * len(rows)
        for i, row in enumerate(rows):
            try:
                features[i] = adapter.prepare(loaded, [row], options, max_length)[0]
            except ModelLoadError:
                raise
            except Exception as exc:  # noqa: BLE001
                errors[i] = _describe(exc)
        return features


def _run(adapter: TaskAdapter, loaded: LoadedModel, index: list[int], features: list[Any],
         options: dict[str, Any], results: RowResults) -> None:
    try:
        outputs = adapter.forward(loaded, adapter.collate(loaded, [features[i] for i in index]), options)
        if len(outputs) != len(index):
            raise HfqError(f"task {adapter.name!r} returned {len(outputs)} outputs for {len(index)} inputs")
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - find the rows that fail by halving the batch
        if len(index) == 1:
            results.errors[index[0]] = _describe(exc)
            return
        half = len(index) // 2
        _run(adapter, loaded, index[:half], features, options, results)
        _run(adapter, loaded, index[half:], features, options, results)
        return
    for i, out in zip(index, outputs, strict=True):
        results.outputs[i] = out


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
