"""A model leaving the worker's model cache gives its memory back: nothing of it may still be referenced when the
cache frees device memory (on CUDA, ``empty_cache`` returns only blocks whose tensors are already gone).

The tensors here are on the CPU, where nothing can be measured in device memory; what is checked is what decides it
on a GPU: that the evicted weights are garbage by the time ``free_device_memory`` runs."""

from __future__ import annotations

import weakref
from typing import Any

import pytest
import torch

from hfqueue.tasks.base import LoadedModel, Task
from hfqueue.worker import models as models_module
from hfqueue.worker.models import ModelCache

pytestmark = pytest.mark.timeout(10)


class Weights(Task):
    """Loads a fresh 1M-parameter linear layer per model name (no files), remembering a weak reference to each."""

    name = "weights"

    def __init__(self) -> None:
        self.loaded: dict[str, weakref.ref[torch.nn.Module]] = {}

    def load(self, model: str, **kwargs: Any) -> LoadedModel:
        net = torch.nn.Linear(1024, 1024)
        self.loaded[model] = weakref.ref(net)
        return LoadedModel(model=net, tokenizer=None, device=kwargs["device"], revision=None)


class Freed(list[dict[str, bool]]):
    """At each call of free_device_memory: which of ``task``'s models were still alive."""

    def __init__(self) -> None:
        super().__init__()
        self.task = Weights()

    def __call__(self, device: str) -> None:
        # Only noted: the real one's gc.collect() would also finalize what earlier tests in this process left
        # behind (an unclosed socket's ResourceWarning, an error under the suite's filterwarnings).
        self.append({name: ref() is not None for name, ref in self.task.loaded.items()})


@pytest.fixture
def freed(monkeypatch: pytest.MonkeyPatch) -> Freed:
    watch = Freed()
    monkeypatch.setattr(models_module, "free_device_memory", watch)
    return watch


def get(cache: ModelCache, task: Task, model: str, version: str | None = None) -> LoadedModel:
    return cache.get(task, model, revision=None, version=version, device="cpu", dtype="float32")


def test_an_evicted_model_is_gone_when_device_memory_is_freed(freed: Freed) -> None:
    # given a cache with room for one model, holding model a
    task, cache = freed.task, ModelCache(1)
    get(cache, task, "a")

    # when model b loads and a is evicted
    get(cache, task, "b")

    # then, when device memory was freed, a's weights were already garbage
    assert freed == [{"a": False, "b": True}]


def test_a_model_whose_files_changed_is_gone_when_device_memory_is_freed(freed: Freed) -> None:
    # given a cache holding model a at one version
    task, cache = freed.task, ModelCache(2)
    get(cache, task, "a", version="files:1")
    first = task.loaded["a"]

    # when a's files change and it is asked for again
    get(cache, task, "a", version="files:2")

    # then the old copy was garbage when device memory was freed (before the new one loaded)
    assert len(freed) == 1 and first() is None
    assert freed[0] == {"a": False}
