"""Running a task over a chunk's rows: batch by length, run, isolate bad rows, restore input order.

A row that cannot be prepared (it does not tokenize or decode) or whose batch raises is not allowed
to take the chunk down with it: a failing batch is split in halves and retried until the failing rows
stand alone, and each of those is reported with its error while every other row gets its output.
A batch that runs out of device memory is split the same way, and the token budget shrinks to half of
that batch for the rest of the job, so later batches are planned small enough. Errors that concern the
whole job (the model does not fit the task) are raised, not isolated.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from hfqueue.core.hooks import Hooks
from hfqueue.errors import HfqError, ModelLoadError
from hfqueue.tasks.base import LoadedModel, Task
from hfqueue.tasks.limits import TokenLimit
from hfqueue.tasks.precision import REDUCED, non_finite
from hfqueue.worker.batching import TokenBudget, plan_batches
from hfqueue.worker.models import free_device_memory

logger = logging.getLogger(__name__)


class BatchStopped(HfqError):
    """``should_stop`` said to stop between two batches (the job was cancelled or failed)."""


@dataclass
class RowResults:
    """One slot per input row: its output dict, or None with ``(error type, message)`` in ``errors``, or None with the
    row listed in ``reused_at`` (its outputs are that row of ``reused``, copied from the result cache);
    ``truncated``: the rows cut to the model's input limit."""

    outputs: list[dict[str, Any] | None]
    errors: dict[int, tuple[str, str]] = field(default_factory=dict)
    truncated: set[int] = field(default_factory=set)
    exact_batches: int = 0  # reduced-precision batches that came out NaN or inf and ran again in float32
    reused_at: list[int] = field(default_factory=list)  # rows taken from the result cache (hfqueue.worker.reuse)
    reused: Any = None  # a pyarrow Table of their output columns, row i for reused_at[i]

    @property
    def rows_truncated(self) -> int:
        """Rows that were cut to the limit and gave an output."""
        reused = set(self.reused_at)
        return sum(1 for i in self.truncated if self.outputs[i] is not None or i in reused)

    def slice(self, start: int, n: int) -> "RowResults":
        """The results of rows ``[start, start + n)``, numbered from 0 (one lane entry's share of a group's run)."""
        inside = [j for j, i in enumerate(self.reused_at) if start <= i < start + n]
        return RowResults(self.outputs[start:start + n],
                          {i - start: e for i, e in self.errors.items() if start <= i < start + n},
                          {i - start for i in self.truncated if start <= i < start + n},
                          self.exact_batches,  # the group's passes were shared: each entry counts them
                          [self.reused_at[j] - start for j in inside],
                          self.reused.take(inside) if self.reused is not None and inside else None)


def infer_rows(task: Task, loaded: LoadedModel, rows: list[Any], options: dict[str, Any], *,
               max_batch_size: int, max_batch_tokens: int | TokenBudget, max_length: int, truncate: bool = True,
               should_stop: Callable[[], bool] = lambda: False,
               lock: AbstractContextManager[Any] | None = None, prefetch: bool = False,
               hooks: Hooks | None = None, exact: Callable[[], LoadedModel] | None = None) -> RowResults:
    """Outputs for ``rows`` in their order, and the error of each row that failed.

    ``lock`` is held around each forward pass, so two threads sharing a model take turns batch by batch.
    With ``prefetch``, a helper thread pads the next batch and moves it to the device while the model
    runs the current one (it pays where the forward pass does not need the CPU: on a GPU). ``hooks`` hear
    of every forward pass and out-of-memory split.

    ``max_batch_tokens`` may be a :class:`TokenBudget` shared across chunks, which out-of-memory
    errors shrink. Raises :class:`BatchStopped` when ``should_stop()`` turns true at a batch
    boundary, and :class:`ModelLoadError` when the task finds the model unfit for the job.

    Rows longer than ``max_length`` or the model's own limit are cut to it and listed in ``truncated``; with
    ``truncate=False`` each such row fails alone instead.

    ``exact`` gives a float32 copy of a reduced-precision model: a batch whose outputs hold NaN or inf runs again
    on it, and so do the batches after it. Without one, such a batch's rows fail, saying so.
    """
    budget = max_batch_tokens if isinstance(max_batch_tokens, TokenBudget) else TokenBudget(max_batch_tokens)
    results = RowResults([None] * len(rows))
    models = Models(loaded, exact)
    tokens = task.input_limit(loaded, options, max_length)
    features = _prepare(task, loaded, rows, options, TokenLimit(tokens, truncate), results)
    lengths = {i: task.length(features[i]) for i in range(len(rows)) if i not in results.errors}
    pending, ran = list(lengths), set()
    while pending:
        tokens = budget.tokens
        batches = [[pending[j] for j in b] for b in plan_batches([lengths[i] for i in pending], max_batch_size, tokens)]
        with _Collated(task, loaded, features, batches, prefetch) as collated:
            for k, batch in enumerate(batches):
                if should_stop():
                    raise BatchStopped("stopped at a batch boundary")
                _run(task, models, batch, features, options, results, budget, lengths, lock or nullcontext(),
                     hooks or Hooks(), ready=collated.get(k))
                ran.update(batch)
                if budget.tokens != tokens:
                    break  # an out-of-memory error shrank the budget: plan the rest again under it
        pending = [i for i in pending if i not in ran]
    if should_stop():  # the end of the last batch is a boundary too: write nothing for a stopped job
        raise BatchStopped("stopped after the last batch")
    return results


def _prepare(task: Task, loaded: LoadedModel, rows: list[Any], options: dict[str, Any],
             limit: TokenLimit, results: RowResults) -> list[Any]:
    try:
        features = task.prepare(loaded, rows, options, limit)
        results.truncated.update(limit.truncated)
        return features
    except (ModelLoadError, SoftTimeLimitExceeded):
        raise
    except Exception:  # noqa: BLE001 - some row is bad (or too long to run whole): prepare them one by one
        features = [None] * len(rows)
        for i, row in enumerate(rows):
            one = TokenLimit(limit.tokens, limit.truncate)
            try:
                features[i] = task.prepare(loaded, [row], options, one)[0]
            except (ModelLoadError, SoftTimeLimitExceeded):
                raise
            except Exception as exc:  # noqa: BLE001
                results.errors[i] = _describe(exc)
            if one.truncated:
                results.truncated.add(i)
        return features


class _Collated:
    """Collated batches in plan order; with ``prefetch``, batch k+1 is collated on a helper thread while
    batch k runs. ``get`` returns None when a batch could not be collated ahead (``_run`` then collates it
    itself and isolates the bad rows)."""

    def __init__(self, task: Task, loaded: LoadedModel, features: list[Any], batches: list[list[int]],
                 prefetch: bool) -> None:
        self._collate = lambda k: task.collate(loaded, [features[i] for i in batches[k]])
        self._count = len(batches)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="hfq-prefetch") if prefetch and len(batches) > 1 else None
        self._ahead: dict[int, Future[Any]] = {}

    def get(self, k: int) -> Any:
        if self._pool is None:
            return None
        future = self._ahead.pop(k, None) or self._pool.submit(self._collate, k)
        if k + 1 < self._count:
            self._ahead[k + 1] = self._pool.submit(self._collate, k + 1)
        try:
            return future.result()
        except Exception:  # noqa: BLE001 - collated again, row by row if need be, by _run
            return None

    def __enter__(self) -> "_Collated":
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


class Models:
    """The model a call's rows run on: the loaded one, or its float32 copy once a reduced-precision batch came out
    NaN or inf (:mod:`hfqueue.tasks.precision`)."""

    def __init__(self, loaded: LoadedModel, exact: Callable[[], LoadedModel] | None) -> None:
        self.loaded = self.current = loaded
        self._exact = exact

    def exact(self) -> LoadedModel | None:
        """Switch to the float32 copy (loaded on first use); None when there is none to switch to."""
        if self._exact is None or self.current is not self.loaded:
            return None
        self.current = self._exact()
        return self.current


def _run(task: Task, models: Models, index: list[int], features: list[Any],
         options: dict[str, Any], results: RowResults, budget: TokenBudget, lengths: dict[int, int],
         lock: AbstractContextManager[Any], hooks: Hooks, ready: Any = None) -> None:
    loaded = models.current
    try:
        ready = ready if loaded is models.loaded else None  # collated ahead for the model it no longer runs on
        batch = ready if ready is not None else task.collate(loaded, [features[i] for i in index])
        with lock:
            started = time.perf_counter()
            outputs = task.forward(loaded, batch, options)
            seconds = time.perf_counter() - started
        if len(outputs) != len(index):
            raise HfqError(f"task {task.name!r} returned {len(outputs)} outputs for {len(index)} inputs")
        if loaded.dtype in REDUCED and any(non_finite(out) for out in outputs):
            exact = models.exact()
            if exact is None:
                why = (f"the model's {loaded.dtype} outputs hold NaN or inf for this batch (an overflow float32 "
                       "does not have): run the job with dtype float32")
                results.errors.update({i: ("NonFiniteOutput", why) for i in index})
                return
            logger.warning("%s: a %s batch of %d rows came out NaN or inf; running it, and the rest of these rows, "
                           "in float32", loaded.name, loaded.dtype, len(index))
            hooks.exact_fallback(task.name, loaded.name)
            results.exact_batches += 1
            loaded = exact
            batch = task.collate(loaded, [features[i] for i in index])
            with lock:
                started = time.perf_counter()
                outputs = task.forward(loaded, batch, options)
                seconds = time.perf_counter() - started
    except (ModelLoadError, SoftTimeLimitExceeded):  # the model or the chunk's time is at fault, not a row
        raise
    except Exception as exc:  # noqa: BLE001 - find the rows that fail by halving the batch, below
        out_of_memory, error = is_out_of_memory(exc), _describe(exc)
    else:
        hooks.batch_done(task.name, loaded.name, rows=len(index), real_tokens=sum(lengths[i] for i in index),
                         padded_tokens=max(lengths[i] for i in index) * len(index), seconds=seconds)
        for i, out in zip(index, outputs, strict=True):
            results.outputs[i] = out
        return
    # Out of the except block, the exception is gone, and with it its traceback, whose frames hold the failed pass's
    # tensors (activations, on the device): the halves must not run beside them. The batch goes too.
    batch = ready = None
    if out_of_memory:
        free_device_memory(loaded.device)
        padded = max(lengths[i] for i in index) * len(index)
        budget.shrink(padded)
        hooks.oom_split(task.name, loaded.name)
        logger.warning("out of memory on a batch of %d rows (%d padded tokens): splitting it; token budget "
                       "now %d", len(index), padded, budget.tokens)
    if len(index) == 1:
        results.errors[index[0]] = error
        return
    half = len(index) // 2
    _run(task, models, index[:half], features, options, results, budget, lengths, lock, hooks)
    _run(task, models, index[half:], features, options, results, budget, lengths, lock, hooks)


def is_out_of_memory(exc: BaseException) -> bool:
    """True for a device out-of-memory error (CUDA's own type, or a RuntimeError that says so)."""
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def _describe(exc: BaseException) -> tuple[str, str]:
    return type(exc).__name__, str(exc)
