"""Reusing earlier results: a chunk's (or a lane group's) rows are looked up in the result cache first, only the
misses run, and their outputs are stored for the jobs after.

A job reuses when its ``reuse`` (default HFQ_REUSE, on) says so, its task's outputs are deterministic (not sampling
without a seed), and its model's version can be known before loading it (:mod:`hfqueue.cache.versions`); otherwise
every row runs, as without a cache. When every row hits, the model is not loaded at all.

The key covers what decides an output (:mod:`hfqueue.cache.keys`); what does not (batch sizes, token budgets,
prefetching, the device) is left out, so a hit carries the output of the run that stored it, within the same
floating-point noise as any rerun whose batches differ.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from hfqueue import tasks
from hfqueue.cache import keys as cache_keys
from hfqueue.cache.versions import model_version
from hfqueue.core.jobs import JobSpec
from hfqueue.tasks.base import LoadedModel
from hfqueue.tasks.precision import resolve_dtype
from hfqueue.worker import chunks
from hfqueue.worker.batching import TokenBudget
from hfqueue.worker.context import WorkerContext
from hfqueue.worker.runner import RowResults

logger = logging.getLogger(__name__)


def run(ctx: WorkerContext, spec: JobSpec, rows: list[Any], device: str, *, max_batch_tokens: int | TokenBudget,
        should_stop: Callable[[], bool] = lambda: False,
        reusable: Sequence[bool] | None = None) -> tuple[dict[str, Any] | None, RowResults]:
    """Outputs for ``rows``: copied from the result cache where stored, computed by ``ctx.run`` where not (and then
    stored). ``reusable[i]`` false keeps row ``i`` out of the cache (a ``client.infer`` row in a lane group).

    Returns the job fields of the model that ran (:func:`~hfqueue.worker.chunks.model_fields`; when none ran, those
    recorded with the cached rows, or None) and the results.
    """
    task = tasks.get(spec.task)
    reuse = spec.reuse if spec.reuse is not None else ctx.settings.reuse
    found = fingerprint(ctx, task, spec, device) if reuse and (reusable is None or any(reusable)) else None
    if found is None:
        loaded, results = ctx.run(spec, rows, device, max_batch_tokens=max_batch_tokens, should_stop=should_stop)
        return chunks.model_fields(ctx, spec, loaded), results
    fp, stamp = found
    cache = ctx.result_cache()
    identities = [task.row_identity(row) if reusable is None or reusable[i] else None for i, row in enumerate(rows)]
    keys = cache_keys.row_keys(fp, identities)
    hits = cache.lookup(keys, str(spec.model))
    results = RowResults([None] * len(rows), truncated=set(hits.truncated), reused_at=hits.positions,
                         reused=hits.outputs)
    hit = set(hits.positions)
    misses = [i for i in range(len(rows)) if i not in hit]
    if hits.positions:
        ctx.hooks.rows_reused(task.name, str(spec.model), rows=len(hits.positions))
    if not misses:
        return cache.meta(fp), results
    loaded, ran = ctx.run(spec, [rows[i] for i in misses], device, max_batch_tokens=max_batch_tokens,
                          should_stop=should_stop)
    for j, i in enumerate(misses):
        results.outputs[i] = ran.outputs[j]
    results.errors = {misses[j]: error for j, error in ran.errors.items()}
    results.truncated |= {misses[j] for j in ran.truncated}
    results.exact_batches = ran.exact_batches
    fields = chunks.model_fields(ctx, spec, loaded)
    if _same_version(loaded, stamp):
        _store(ctx, task, spec, fp, [(i, keys[i]) for i in misses], results, fields)
    return fields, results


def fingerprint(ctx: WorkerContext, task: tasks.Task, spec: JobSpec, device: str) -> tuple[str, str] | None:
    """``(fingerprint, model stamp)`` of the spec's rows on this worker, or None when its results must not be
    reused: sampling without a seed, or a model (or adapter) whose version cannot be resolved. The stamp is what
    the model that runs must have been loaded at (:attr:`LoadedModel.version`) for its outputs to be stored."""
    if not task.deterministic(spec.options):
        return None
    version = model_version(str(spec.model), spec.revision)
    adapter = model_version(spec.adapter, None) if spec.adapter else None
    if version is None or (spec.adapter and adapter is None):
        logger.info("%s: its version cannot be resolved without loading it, so its rows are neither reused nor stored",
                    spec.adapter if version is not None else spec.model)
        return None
    settings = ctx.settings
    dtype = resolve_dtype(spec.dtype or settings.dtype, device)
    fields = {
        # Entries of one output root are never found by jobs confined to another, even in a shared cache folder.
        "output_root": str(settings.output_root.expanduser().resolve()),
        "task": task.name, "model": str(spec.model), "model_version": version,
        "adapter": spec.adapter, "adapter_version": adapter,
        "options": spec.options, "truncate": spec.truncate, "max_length": settings.max_length,
        "dtype": dtype, "engine": spec.engine or ctx.default_engine(task, spec, dtype, device),
        "quantization": spec.quantization, "trust_remote_code": spec.trust_remote_code,
    }
    # a folder's stamp reads no file; "" (unresolvable by now) matches no loaded model, so nothing is stored
    stamp = model_version(str(spec.model), spec.revision, content=False) or ""
    return cache_keys.fingerprint(fields), stamp


def _same_version(loaded: LoadedModel, version: str) -> bool:
    """Whether the model that ran is the version the rows were keyed by (a folder can be rewritten, a Hub branch
    can move, in between)."""
    return loaded.version == version


def _store(ctx: WorkerContext, task: tasks.Task, spec: JobSpec, fp: str, ran: list[tuple[int, bytes | None]],
           results: RowResults, fields: dict[str, Any]) -> None:
    """Add the rows that ran and gave an output to the cache (rows without a key stay out)."""
    stored = [(i, key) for i, key in ran if key is not None and results.outputs[i] is not None]
    if not stored:
        return
    outputs = chunks.output_table(task, spec.options, [results.outputs[i] for i, _ in stored])  # type: ignore[misc]
    ctx.result_cache().put(fp, str(spec.model), [key for _, key in stored], outputs,
                           [i in results.truncated for i, _ in stored], fields)
