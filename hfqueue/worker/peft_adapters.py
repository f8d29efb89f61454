"""PEFT adapters (LoRA and the like) applied on top of a resident base model.

A job may name a PEFT adapter (``JobSpec.adapter``: a Hub id or a local folder) beside its base ``model``.
The worker keeps the base resident once (the model cache) and injects each adapter into it with peft
(``PeftModel.from_pretrained`` for the first, ``load_adapter`` for the next), so jobs for different
adapters of one base share a worker without loading the base again. The injected layers live inside the
base model's own modules, so every task — plain forward passes, ``generate``, pipelines built around the
model — runs through them unchanged. Which adapter they apply, or none for a job without one, is set for
each forward pass inside the same hold of the model lock as the pass itself (:class:`Activation`): the
chunk thread and the request-lane thread take turns batch by batch, and neither can switch the adapter
under the other's pass.

Each base keeps at most ``HFQ_ADAPTER_CACHE_SIZE`` adapters; the least recently used one leaves with
``delete_adapter``. Refused, failing the job with the reason: an adapter made for another base model
(its ``base_model_name_or_path``), prompt-learning adapters (prompt or prefix tuning, P-tuning, adaption
prompts: they act through PeftModel's own forward, which tasks do not call), adapters that train the
base's biases (``bias`` other than ``none``: loading them would change the shared base for every job), and
any adapter on a base whose device map offloaded weights to CPU or disk (peft cannot load into those).
"""

from __future__ import annotations

import logging
import re
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from hfqueue.core import paths
from hfqueue.errors import ModelLoadError
from hfqueue.tasks.base import LoadedModel

logger = logging.getLogger(__name__)

_UNKNOWN = object()  # which adapter the layers apply is not known (after a load or a removal): set it again


class PeftAdapters:
    """The adapters applied to one resident base model, least recently used first.

    Every method must be called with the model lock held: they change layers the forward passes run through.
    """

    def __init__(self, loaded: LoadedModel, size: int) -> None:
        self.loaded, self.size = loaded, size
        self.peft: Any = None  # the PeftModel wrapping loaded.model, from the first adapter on
        self._names: OrderedDict[str, str] = OrderedDict()  # adapter (as the job names it) -> peft adapter name
        self._versions: dict[str, str | None] = {}  # adapter -> the version applied (hfqueue.cache.versions)
        self._made = 0
        self._active: object = _UNKNOWN
        self.sources: tuple[str, ...] = ()  # replaced whole on change: the heartbeat thread reads it without the lock

    def name(self, source: str, version: str | None) -> str:
        """The peft name of the adapter ``source``, applying it first when it is not (the least recently used
        one leaves when more than ``size`` are applied), or applying it anew when its ``version`` (what its files
        resolve to now: :func:`hfqueue.cache.versions.model_version`) is not the one applied: a folder rewritten,
        a Hub branch moved. Raises :class:`ModelLoadError` for an adapter that does not load or does not fit
        the base."""
        if source in self._names and self._versions.get(source) != version:
            logger.info("adapter %s changed (version %s, was %s): applying it again", source, version,
                        self._versions.get(source))
            self._remove(self._names.pop(source))
            self.sources = tuple(self._names)
        return self._name(source, version)

    def _name(self, source: str, version: str | None) -> str:
        if source in self._names:
            self._names.move_to_end(source)
            return self._names[source]
        name = self._apply(source)
        self._names[source], self._versions[source] = name, version
        while len(self._names) > self.size:
            old_source, old_name = self._names.popitem(last=False)
            self._versions.pop(old_source, None)
            self._remove(old_name)
            logger.info("removed adapter %s from %s (adapter cache full)", old_source, self.loaded.name)
        self.sources = tuple(self._names)
        return name

    def activate(self, source: str | None) -> None:
        """Make the next forward passes run through the adapter ``source``, or through the plain base for None."""
        # its version was checked when the job began; applied again (evicted since) as it was then
        name = None if source is None else self._name(source, self._versions.get(source))
        if self.peft is None or name == self._active:
            return
        try:
            if name is None:
                self.peft.base_model.disable_adapter_layers()
            else:
                self.peft.base_model.enable_adapter_layers()
                self.peft.set_adapter(name, inference_mode=True)
        except Exception as exc:  # a row is not at fault: fail the job, not the batch
            self._active = _UNKNOWN
            raise ModelLoadError(f"cannot switch {self.loaded.name!r} to adapter {source!r}: {exc}",
                                 value=source) from exc
        self._active = name

    def _apply(self, source: str) -> str:
        from peft import PeftModel

        config = read_config(source)
        problem = config_problem(config, self.loaded.name) or offload_problem(self.loaded.model)
        if problem:
            raise ModelLoadError(f"adapter {source!r} cannot be applied to model {self.loaded.name!r}: {problem}",
                                 value=source)
        name = f"adapter{self._made}"  # peft names become module keys: no dots, and never reused
        self._made += 1
        started = time.perf_counter()
        self._active = _UNKNOWN  # peft activates a new adapter itself on some layers
        # The adapter's weights are read onto the base's (first) device: left to itself, peft reads them onto CUDA
        # whenever the host has a GPU, so a CPU worker there, or one on cuda:1, would touch cuda:0.
        device = (self.loaded.devices or [self.loaded.device])[0]
        try:
            with _quiet_peft():
                if self.peft is None:
                    self.peft = PeftModel.from_pretrained(self.loaded.model, source, adapter_name=name, config=config,
                                                          torch_device=device)
                else:
                    self.peft.load_adapter(source, adapter_name=name, torch_device=device)
        except Exception as exc:  # noqa: BLE001 - bad weights, shapes that do not fit, a Hub error
            self._undo(name, config)
            raise ModelLoadError(f"cannot apply adapter {source!r} to model {self.loaded.name!r}: {_short(exc)}",
                                 value=source) from exc
        self.loaded.model.eval()  # injected layers start in training mode (dropout on)
        logger.info("applied adapter %s to %s in %.2f s", source, self.loaded.name, time.perf_counter() - started)
        return name

    def _remove(self, name: str) -> None:
        self._active = _UNKNOWN
        others = [n for n in self._names.values() if n != name]
        try:
            with _quiet_peft():
                if others:  # deleting the active adapter makes peft pick another and warn: pick one first
                    self.peft.set_adapter(others[-1], inference_mode=True)
                self.peft.delete_adapter(name)
        except Exception:  # noqa: BLE001 - left half deleted, the layers are suspect: load the base again
            logger.exception("could not remove adapter %s from %s", name, self.loaded.name)
            self.loaded.broken = True

    def _undo(self, name: str, config: Any) -> None:
        """Take a half-applied adapter out again, so the base runs as before for every other job."""
        from peft.functional import delete_adapter

        self._active = _UNKNOWN
        try:
            with _quiet_peft():
                delete_adapter(self.loaded.model, adapter_name=name, prefix=f"{config.peft_type.value.lower()}_")
                if self.peft is not None:
                    self.peft.peft_config.pop(name, None)
                else:
                    getattr(self.loaded.model, "peft_config", {}).pop(name, None)
        except Exception:  # noqa: BLE001 - nothing was injected, or it cannot be taken out: the base is suspect
            logger.exception("could not take adapter %s out of %s after it failed", name, self.loaded.name)
            self.loaded.broken = True


def _short(exc: BaseException, limit: int = 600) -> str:
    """An exception's text, cut: peft lists every tensor whose shape does not fit, hundreds for a large model."""
    text = str(exc)
    return text if len(text) <= limit else text[:limit] + f" ... ({len(text) - limit} more characters)"


def adapters_of(loaded: LoadedModel, size: int) -> PeftAdapters:
    """The adapters of a resident model (none applied yet on first use)."""
    if loaded.peft is None:
        loaded.peft = PeftAdapters(loaded, size)
    assert isinstance(loaded.peft, PeftAdapters)
    return loaded.peft


class Activation(AbstractContextManager["Activation"]):
    """The model lock, held with the job's adapter set on its model (or none): one forward pass's turn.

    Reusable, one hold at a time: :func:`~hfqueue.worker.runner.infer_rows` enters it around every batch.
    """

    def __init__(self, lock: threading.Lock, loaded: LoadedModel, source: str | None, size: int) -> None:
        self.lock, self.loaded, self.source, self.size = lock, loaded, source, size

    def __enter__(self) -> "Activation":
        self.lock.acquire()
        try:
            self._check()
            if self.source is not None or self.loaded.peft is not None:
                adapters_of(self.loaded, self.size).activate(self.source)
            self._check()  # applying this job's adapter may have had to remove another, and failed at it
        except BaseException:
            self.lock.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.lock.release()

    def _check(self) -> None:
        if self.loaded.broken:
            raise ModelLoadError(f"model {self.loaded.name!r} was left in an unknown state by an adapter that failed "
                                 "to load or to leave; it is loaded again for the next job", value=self.loaded.name)


def read_config(source: str) -> Any:
    """The adapter's ``PeftConfig`` (from ``adapter_config.json``, locally or from the Hub)."""
    from peft import PeftConfig

    try:
        return PeftConfig.from_pretrained(source)
    except Exception as exc:  # noqa: BLE001 - no such folder or repo, no adapter_config.json, offline
        raise ModelLoadError(f"cannot read the PEFT adapter config of {source!r}: {exc}", value=source) from exc


def config_problem(config: Any, model: str) -> str | None:
    """Why an adapter with this config cannot be applied to the resident ``model``, or None."""
    base = getattr(config, "base_model_name_or_path", None)
    if base and not same_model(base, model):
        return (f"the adapter was made for base model {base!r}, and this job's model is {model!r}; "
                "submit the job with the adapter's base model")
    if config.is_prompt_learning or getattr(config, "is_adaption_prompt", False):
        return (f"it is a {config.peft_type.value} adapter, which acts through PeftModel's own forward; only adapters "
                "that change the model's layers (LoRA, LoHa, LoKr, IA3, ...) run on a shared base")
    bias = getattr(config, "bias", "none")
    if bias != "none":
        return (f"it trains the base model's biases (bias={bias!r}), which would change the shared base model for "
                "every job; only adapters with bias='none' run on a shared base")
    return None


def offload_problem(model: Any) -> str | None:
    """Why adapters cannot go on this model's weights, or None: peft cannot load into weights a device map
    offloaded (they wait on the meta device), and would leave those layers without the adapter."""
    if any(p.device.type == "meta" for p in model.parameters()):
        return ("the worker's device map offloaded part of the base model's weights to CPU or disk, where adapters "
                "cannot be loaded; give the GPUs more room (HFQ_MAX_MEMORY) or the worker more GPUs")
    return None


def same_model(named: str, model: str) -> bool:
    """Whether an adapter's ``base_model_name_or_path`` names the job's ``model``.

    Two local folders that exist here match when they resolve to the same folder; two Hub ids when they are
    equal (case aside). When the two cannot be compared that way — a Hub id against a local copy, or a path
    from the machine the adapter was trained on — they match when their last names agree (``Llama-3-8B``
    for ``meta-llama/Llama-3-8B``, ``/models/Llama-3-8B`` or a Hub cache snapshot of it).

    >>> same_model("meta-llama/Llama-3-8B", "/nowhere/models/Llama-3-8B")
    True
    >>> same_model("meta-llama/Llama-3-8B", "meta-llama/Llama-3-70B")
    False
    """
    here_named, here_model = _existing(named), _existing(model)
    if here_named and here_model:
        return here_named == here_model
    if not paths.looks_local(named) and not paths.looks_local(model) and "/" in named and "/" in model:
        return named.lower() == model.lower()
    return _last_name(named) == _last_name(model)


def _existing(name: str) -> Path | None:
    path = Path(name).expanduser()
    return paths.resolved(path) if path.exists() else None


def _last_name(name: str) -> str:
    parts = [p for p in re.split(r"[/\\]", name.rstrip("/\\")) if p]
    for part in parts:  # a Hub cache folder: .../models--org--name/snapshots/<commit>
        if part.startswith("models--"):
            return part.split("--")[-1].lower()
    return parts[-1].lower() if parts else ""


@contextmanager
def _quiet_peft() -> Iterator[None]:
    """Leave out of the worker's log the warnings peft gives for what this module does on purpose."""
    with warnings.catch_warnings():
        # Several adapters on one model is the point here.
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute", category=UserWarning)
        # peft 0.21 reads transformers' deprecated is_gradient_checkpointing when it wraps a model.
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield
