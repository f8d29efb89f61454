"""Models resident in a worker process: loaded once per (task, model, revision, device, dtype, quantization, engine)
and the version the model resolves to, LRU-bounded. PEFT adapters are applied on top of these
(hfqueue.worker.peft_adapters), not loaded as models.

A model's files can change under its name: a local folder rewritten in place, a Hub branch that moved. Each lookup
resolves the model's version (:func:`hfqueue.cache.versions.model_version` with ``content=False``: a folder's
stamp of its files' names, sizes and modification times; a Hub revision's commit), so a changed model loads anew
and the old one leaves, instead of serving outputs of weights that are no longer there. Names of one version (no
revision, ``main``, main's commit) share one copy in memory."""

from __future__ import annotations

import gc
import logging
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, NamedTuple

from hfqueue.cache.versions import COMMIT
from hfqueue.core.hooks import Hooks
from hfqueue.tasks.base import LoadedModel, Task
from hfqueue.tasks.engines.attach import attach

logger = logging.getLogger(__name__)

class ModelKey(NamedTuple):
    """What a resident model is loaded for; ``version`` is what its files resolved to (see the module)."""

    task: str
    model: str
    revision: str | None
    version: str | None
    device: str
    dtype: str
    quantization: str | None
    engine: str


def resolve_device(device: str) -> str:
    """``auto`` becomes ``cuda`` when a GPU is visible, else ``cpu``.

    Called only in the process that serves models: touching CUDA in a parent that later forks breaks
    CUDA in the children.
    """
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class ModelCache:
    """A bounded least-recently-used cache of loaded models."""

    def __init__(self, size: int, hooks: Hooks | None = None, *, device_map: str | None = None,
                 max_memory: dict[str, str] | None = None) -> None:
        self.size = size
        self.hooks = hooks or Hooks()
        self.device_map, self.max_memory = device_map, max_memory  # HFQ_DEVICE_MAP, HFQ_MAX_MEMORY
        self._models: OrderedDict[ModelKey, LoadedModel] = OrderedDict()
        # replaced whole on change: other threads read it without the lock
        self._entries: tuple[tuple[ModelKey, LoadedModel], ...] = ()
        self.loads = 0

    def resident(self) -> list[dict[str, Any]]:
        """The resident models, oldest load first: task, model, revision, version (a Hub commit, a folder's
        ``files:`` stamp), device, dtype, quantization, the devices their weights lie on and the PEFT adapters
        applied to them (least recently used first)."""
        return [{**key._asdict(), "devices": list(loaded.devices),
                 "adapters": list(loaded.peft.sources) if loaded.peft is not None else []}
                for key, loaded in self._entries]

    def devices(self) -> list[str]:
        """Every device the resident models' weights lie on (GPUs first)."""
        names = {d for _, loaded in self._entries for d in loaded.devices}
        return sorted(names, key=lambda n: (not n.startswith("cuda"), len(n), n))

    def get(self, task: Task, model: str, *, revision: str | None, version: str | None, device: str, dtype: str,
            quantization: str | None = None, trust_remote_code: bool = False, engine: str = "torch",
            engine_cache: Path | None = None) -> LoadedModel:
        """The loaded model for this key, loading it (and evicting the oldest) on a miss; with an ``engine`` other
        than torch, its body runs on that engine (built or found in ``engine_cache``, verified against torch).

        ``version``: what the model's files resolve to now (:func:`hfqueue.cache.versions.model_version`, which
        the caller runs outside its model lock: it may ask the Hub); None when that cannot be known (the load
        decides)."""
        key = ModelKey(task.name, model, revision, version, device, dtype, quantization, engine)
        if key in self._models and self._models[key].broken:
            logger.warning("dropping %s (%s): a PEFT adapter that failed to load left it unusable", model, task.name)
            broken = self._models[key]
            names = [k for k, m in self._models.items() if m is broken]
            del broken  # held here, it would outlive _forget's freeing of its memory
            for name in names:
                self._forget(name)
        if key in self._models:
            self._models.move_to_end(key)
            self.hooks.cache_hit(task.name, model)
            return self._models[key]
        self._drop_other_versions(key)
        twin = self._same_weights(key)
        if twin is not None:  # one copy in memory serves every name of the same version
            self._models[key] = twin
            self._entries = tuple(self._models.items())
            self.hooks.cache_hit(task.name, model)
            return twin
        started = time.perf_counter()
        # A Hub revision loads at the commit it resolved to, so what runs is the version the key (and the result
        # cache's fingerprint) names, even if the branch moves during the load.
        at = version if version is not None and COMMIT.match(version) else revision
        loaded = task.load(model, revision=at, device=device, dtype=dtype, quantization=quantization,
                           trust_remote_code=trust_remote_code, device_map=self.device_map, max_memory=self.max_memory)
        loaded.name, loaded.dtype, loaded.version = model, dtype, version
        if engine != "torch":
            attach(loaded, engine=engine, cache_root=engine_cache or Path("~/.cache/hfqueue/engines"), model_id=model)
        seconds = time.perf_counter() - started
        self.loads += 1
        where = ", ".join(loaded.devices) or device
        logger.info("loaded %s for %s on %s in %.1f s", model, task.name, where, seconds)
        self.hooks.model_loaded(task.name, model, seconds=seconds)
        self._models[key] = loaded
        while self._count() > self.size:
            oldest = next(iter(self._models))
            logger.info("evicted %s (%s) from the model cache", oldest.model, oldest.task)
            self._forget(oldest)
        self._entries = tuple(self._models.items())
        self.hooks.models_resident(self._count())
        return loaded

    def _count(self) -> int:
        """Models in memory (several keys may name one: see :meth:`_same_weights`)."""
        return len({id(loaded) for loaded in self._models.values()})

    def _same_weights(self, key: ModelKey) -> LoadedModel | None:
        """A resident model of ``key``'s version under another revision name: no revision, ``main`` and main's
        commit all resolve to one commit, and are served by one copy."""
        if key.version is None:
            return None
        return next((m for k, m in self._models.items() if k._replace(revision=None) == key._replace(revision=None)),
                    None)

    def _forget(self, key: ModelKey) -> None:
        """Drop ``key``; its model leaves, and its memory is given back, once no other key names it."""
        loaded = self._models.pop(key)
        self._entries = tuple(self._models.items())
        if all(other is not loaded for other in self._models.values()):
            self.hooks.model_evicted(key.task, key.model)
            # The last references go first: emptying the CUDA cache returns only blocks no tensor holds any more.
            del loaded
            free_device_memory(key.device)

    def _drop_other_versions(self, key: ModelKey) -> None:
        """Unload the resident models that differ from ``key`` only in version: their files changed."""
        same = key._replace(version=None)
        for old in [k for k in self._models if k._replace(version=None) == same]:
            logger.info("%s (%s) changed (version %s, was %s): loading it again", key.model, key.task, key.version,
                        old.version)
            self._forget(old)


def free_device_memory(device: str) -> None:
    """Give memory held by dropped tensors back: to Python, and on CUDA to the device."""
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
