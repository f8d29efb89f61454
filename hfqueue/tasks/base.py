"""The contract every task adapter follows, and the loading and collating that text tasks share.

An adapter turns rows into model inputs (``prepare``), runs one batch (``forward``) and shapes one
output dict per row. Batching, ordering and writing are the worker's job, not the adapter's, so a new
task is one short file. Adapters import torch and transformers inside their methods: the producer
imports this package to validate specs and must stay light.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from hfqueue.errors import InvalidSpecError, ModelLoadError

logger = logging.getLogger(__name__)


class NoOptions(BaseModel):
    """Options of a task that takes none."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class LoadedModel:
    """A model resident in a worker process, with what is needed to run it."""

    model: Any
    tokenizer: Any
    device: str
    revision: str | None
    extra: dict[str, Any] = field(default_factory=dict)


class TaskAdapter:
    """Base class of task adapters. Subclasses set ``name``, ``aliases``, ``Options`` and ``model_class``."""

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    Options: ClassVar[type[BaseModel]] = NoOptions
    model_class: ClassVar[str] = "AutoModel"  # attribute of `transformers`, loaded by name

    def validate_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """Check ``options`` against ``Options``; return them with defaults filled in."""
        try:
            return self.Options(**options).model_dump()
        except ValidationError as exc:
            raise ValueError(f"invalid options for task {self.name!r}: {exc}") from None

    def load(self, model: str, *, revision: str | None, device: str, dtype: str, trust_remote_code: bool) -> LoadedModel:
        """Load tokenizer and model once; the worker keeps the result resident."""
        import torch
        import transformers

        transformers.utils.logging.disable_progress_bar()  # a bar per load floods worker logs
        torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
        kwargs: dict[str, Any] = {"revision": revision, "trust_remote_code": trust_remote_code}
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(model, **kwargs)
            model_cls = getattr(transformers, self.model_class)
            net = model_cls.from_pretrained(model, dtype=torch_dtype, **kwargs)
        except Exception as exc:  # transformers raises OSError, ValueError, KeyError, ... for bad models
            raise ModelLoadError(f"cannot load model {model!r} for task {self.name!r}: {exc}", value=model) from exc
        net.to(device).eval()
        return LoadedModel(net, tokenizer, device, resolved_revision(model, net, revision))

    def prepare(self, loaded: LoadedModel, rows: list[Any], options: dict[str, Any], max_length: int) -> list[dict[str, Any]]:
        """Tokenize rows one by one (no padding); each result's ``input_ids`` length drives batching."""
        enc = loaded.tokenizer(list(rows), truncation=True, max_length=max_length)
        return [{k: enc[k][i] for k in enc.keys()} for i in range(len(rows))]

    def collate(self, loaded: LoadedModel, features: list[dict[str, Any]]) -> dict[str, Any]:
        """Pad a batch of prepared rows into tensors on the model's device."""
        batch = loaded.tokenizer.pad(features, return_tensors="pt")
        return {k: v.to(loaded.device) for k, v in batch.items()}

    def forward(self, loaded: LoadedModel, batch: dict[str, Any], options: dict[str, Any]) -> list[dict[str, Any]]:
        """Run one collated batch; return one output dict per row, in batch order."""
        raise NotImplementedError


def resolved_revision(model: str, net: Any, asked: str | None) -> str | None:
    """The commit a Hub model was loaded from (for the manifest); None for a local folder."""
    if Path(model).expanduser().exists():
        return None
    return getattr(net.config, "_commit_hash", None) or asked


def check_options(adapter: TaskAdapter, options: dict[str, Any]) -> dict[str, Any]:
    """``adapter.validate_options`` with the error turned into an :class:`InvalidSpecError`."""
    try:
        return adapter.validate_options(options)
    except ValueError as exc:
        raise InvalidSpecError(str(exc), value=options) from None
