"""What a model-serving process holds: settings, Redis and the job store, resident models, token budgets, one lock.

Chunk tasks (Celery) and the request lane (a thread) share one context per serving process, so a
model is loaded once and both take turns on it batch by batch.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from redis import Redis

from hfqueue import tasks
from hfqueue.cache.store import ResultCache
from hfqueue.cache.versions import model_version
from hfqueue.core import paths
from hfqueue.core.config import Settings
from hfqueue.core.hooks import Hooks
from hfqueue.core.jobs import JobSpec
from hfqueue.errors import InvalidSpecError, ModelLoadError
from hfqueue.state.store import JobStore
from hfqueue.tasks.base import LoadedModel
from hfqueue.tasks.precision import REDUCED, resolve_dtype
from hfqueue.worker.batching import TokenBudget
from hfqueue.worker.models import ModelCache
from hfqueue.worker.peft_adapters import Activation, adapters_of
from hfqueue.worker.runner import RowResults, infer_rows

_imports = threading.Lock()


def warm_imports() -> None:
    """Finish importing transformers before this thread reads a dataset or loads a model.

    datasets looks up ``transformers.PreTrainedTokenizerBase`` whenever transformers is in ``sys.modules``;
    while the other serving thread (chunk task or request lane) is still importing it, the attribute is
    missing and reading a chunk's rows fails. One thread imports, the other waits.
    """
    with _imports:
        import transformers

        transformers.PreTrainedTokenizerBase  # noqa: B018 - the lazy module imports it on access


@dataclass
class WorkerContext:
    """Per-process state of a worker's serving process."""

    settings: Settings
    redis: Redis  # the lane, presence, routing and replies; the job store is built on this same client
    store: JobStore
    models: ModelCache
    # (job, model, device) -> token budget, shrunk by out-of-memory errors for the rest of the job.
    budgets: OrderedDict[tuple[str, str, str], TokenBudget] = field(default_factory=OrderedDict)
    # Held around model loads and forward passes: chunks and client.infer requests share the models.
    lock: threading.Lock = field(default_factory=threading.Lock)
    hooks: Hooks = field(default_factory=Hooks)  # observers of batches, loads and outcomes (metrics)
    worker: str = "?"  # the Celery node name of this worker
    metrics_url: str | None = None  # what the hooks serve from this process (metrics), once they do
    results: ResultCache | None = None  # the result cache, opened on first use (hfqueue.worker.reuse)

    def result_cache(self) -> ResultCache:
        """The result cache of this worker's output root (HFQ_CACHE_DIR), opened on first use."""
        with self.lock:
            if self.results is None:
                self.results = ResultCache.of(self.settings)
            return self.results

    def model(self, task: tasks.Task, spec: JobSpec, device: str) -> LoadedModel:
        """The spec's model for ``task`` from the cache (loaded on a miss), with the spec's PEFT adapter applied,
        once the worker allows it: remote code only with HFQ_ALLOW_REMOTE_CODE, a local model or PEFT adapter folder
        only inside HFQ_INPUT_ROOTS."""
        if spec.trust_remote_code and not self.settings.allow_remote_code:
            raise ModelLoadError("the job asks for trust_remote_code, which this worker does not allow "
                                 "(the operator can set HFQ_ALLOW_REMOTE_CODE=true)", value=spec.model)
        # every way to a model passes here, client.infer requests included
        for name, what in ((str(spec.model), "model"), (spec.adapter, "adapter")):
            try:
                if name is not None:
                    paths.check_model_path(name, self.settings.input_roots, what=what)
            except InvalidSpecError as exc:
                raise ModelLoadError(f"this worker refuses the {what}: {exc}", value=name) from None
        dtype = resolve_dtype(spec.dtype or self.settings.dtype, device)
        engine = spec.engine or self.default_engine(task, spec, dtype, device)
        # Resolved before the lock (they may ask the Hub, once a minute): a changed model or adapter loads anew. A
        # folder's stamp (names, sizes, mtimes), not its content hash: nothing here needs to read its files.
        version = model_version(str(spec.model), spec.revision, content=False)
        adapter_version = model_version(spec.adapter, None, content=False) if spec.adapter is not None else None
        with self.lock:
            loaded = self.models.get(task, str(spec.model), revision=spec.revision, version=version,
                                     device=device, dtype=dtype,
                                     quantization=spec.quantization, trust_remote_code=spec.trust_remote_code,
                                     engine=engine, engine_cache=self.settings.engine_cache)
            if spec.adapter is not None:  # applied now, so an adapter that does not fit fails before any row runs
                adapters_of(loaded, self.settings.adapter_cache_size).name(spec.adapter, adapter_version)
            return loaded

    def default_engine(self, task: tasks.Task, spec: JobSpec, dtype: str, device: str) -> str:
        """HFQ_ENGINE for a job that names no engine, where it can run the job (its task has it, float32 weights
        alone, on the CPU); else torch."""
        wanted = self.settings.engine
        runs = (wanted in task.engines and spec.adapter is None and spec.quantization is None and dtype == "float32"
                and device.startswith("cpu") and not self.settings.device_map)
        return wanted if runs else "torch"

    def run(self, spec: JobSpec, rows: list[Any], device: str, *, max_batch_tokens: int | TokenBudget,
            should_stop: Callable[[], bool] = lambda: False) -> tuple[LoadedModel, RowResults]:
        """Run ``rows`` through the spec's resident model in batches, taking turns with the other thread.

        Each batch holds the lock with the spec's PEFT adapter (or none) set on the model for its forward pass.
        """
        task = tasks.get(spec.task)
        loaded = self.model(task, spec, device)
        turn = Activation(self.lock, loaded, spec.adapter, self.settings.adapter_cache_size)
        # A reduced-precision batch that comes out NaN or inf runs again on a float32 copy of the model. Not with a
        # PEFT adapter: the turn sets adapters on this copy only, so such rows fail with the reason instead.
        exact = None
        if loaded.dtype in REDUCED and spec.adapter is None:
            exact = functools.partial(self.model, task, spec.model_copy(update={"dtype": "float32"}), device)
        results = infer_rows(task, loaded, rows, spec.options, max_batch_size=self.settings.max_batch_size,
                             max_batch_tokens=max_batch_tokens, max_length=self.settings.max_length,
                             truncate=spec.truncate,
                             should_stop=should_stop, lock=turn, prefetch=self.settings.prefetch(device),
                             hooks=self.hooks, exact=exact)
        self.hooks.rows_done(task.name, loaded.name, ok=len(rows) - len(results.errors), failed=len(results.errors),
                             truncated=results.rows_truncated)
        return loaded, results

    def budget(self, job_id: str, model: str, device: str) -> TokenBudget:
        """The job's token budget for this model on this device (the newest 64 jobs' are kept).

        Only chunk tasks use budgets (the request lane has its own fixed budget), so one thread touches them.
        """
        key = (job_id, model, device)
        if key not in self.budgets:
            self.budgets[key] = TokenBudget(self.settings.batch_tokens(device))
            while len(self.budgets) > 64:
                self.budgets.popitem(last=False)
        return self.budgets[key]
