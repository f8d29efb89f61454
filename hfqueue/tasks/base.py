"""The contract every task follows, and the loading and collating that text tasks share.

A task turns rows into model inputs (``prepare``), runs one batch (``forward``) and shapes one
output dict per row. Batching, ordering, per-row errors and writing are the worker's job, not the
task's, so a new task is one short file. Tasks import torch and transformers inside their
methods: the producer imports this package to validate specs and must stay light.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from hfqueue.errors import ModelLoadError
from hfqueue.tasks.identity import canonical
from hfqueue.tasks.limits import TokenLimit, model_limit, tokenize
from hfqueue.tasks.loading import head_problem, input_device, load_weights, placement, read_config, resolved_revision

if TYPE_CHECKING:
    import pyarrow as pa

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
    name: str = ""  # the model id or folder the job named (set by the cache; a metrics label)
    devices: list[str] = field(default_factory=list)  # where its weights lie, e.g. ["cuda:0", "cuda:1"]
    peft: Any = None  # the PEFT adapters applied to it, once a job named one (hfqueue.worker.peft_adapters)
    broken: bool = False  # a PEFT adapter that failed half-applied left it unusable: the cache loads it again
    max_tokens: int | None = None  # the model's own input limit (tokenizer, positions, max_seq_length); None: none
    dtype: str = ""  # the precision it runs in (hfqueue.tasks.precision; set by the cache)
    version: str | None = None  # what its files resolved to when loaded (hfqueue.cache.versions; set by the cache)


class Task:
    """Base class of tasks.

    Subclasses set ``name``, ``default_model`` and ``output_types``, and usually ``aliases``,
    ``Options``, ``model_class`` / ``heads`` (the auto class and the transformers mappings a model must
    be in) and ``fields`` (what one row holds), then implement ``forward``.
    """

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    # What its body may run on (hfqueue.tasks.engines): encoder tasks whose forward calls the body once add onnx.
    engines: ClassVar[tuple[str, ...]] = ("torch",)
    Options: ClassVar[type[BaseModel]] = NoOptions
    model_class: ClassVar[str] = "AutoModel"  # attribute of `transformers`, loaded by name
    heads: ClassVar[tuple[str, ...]] = ()  # transformers auto mappings that list fitting architectures
    default_model: ClassVar[tuple[str, str | None]]  # (Hub id, pinned revision), as `pipeline` pins them
    fields: ClassVar[tuple[str, ...]] = ("text",)  # what one row holds; one dataset column each
    optional_fields: ClassVar[tuple[str, ...]] = ()  # what a row may hold besides (text-classification: text_pair)
    echo_inputs: ClassVar[bool] = True  # copy non-string inputs (e.g. chat messages) into parts as JSON

    # ---- checks that run at submit time (no torch) ----

    def validate_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """Check ``options`` against ``Options``; return them with defaults filled in."""
        try:
            return self.Options(**options).model_dump()
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'options'}: "
                                 f"{e['msg'].removeprefix('Value error, ')}" for e in exc.errors())
            raise ValueError(f"invalid options for task {self.name!r}: {problems}") from None

    def resolve_columns(self, column: str | None, columns: dict[str, str] | None) -> dict[str, str]:
        """The dataset column of each field: ``columns`` as given, or ``column`` for a one-field task."""
        if columns is not None:
            if not set(self.fields) <= set(columns) <= {*self.fields, *self.optional_fields}:
                also = f" (and may read {list(self.optional_fields)})" if self.optional_fields else ""
                raise ValueError(f"task {self.name!r} reads the fields {list(self.fields)}{also}; `columns` must map "
                                 f"each of them to a dataset column, got {sorted(columns)}")
            if column is not None:
                raise ValueError("give `column` or `columns`, not both")
            return dict(columns)
        if column is not None:
            if len(self.fields) > 1:
                raise ValueError(f"task {self.name!r} reads {len(self.fields)} fields {list(self.fields)}; "
                                 "name their columns with `columns`, e.g. "
                                 + str({f: f"my_{f}" for f in self.fields}))
            return {self.fields[0]: column}
        return {f: f for f in self.fields}

    def row_problem(self, row: Any) -> str | None:
        """What is wrong with one inline row, or None. One-field tasks take strings (or, with optional fields,
        ``{field: str}`` dicts)."""
        if self.optional_fields and isinstance(row, dict):
            allowed = {*self.fields, *self.optional_fields}
            if not set(self.fields) <= set(row) <= allowed or not all(isinstance(v, str) for v in row.values()):
                return (f"task {self.name!r} takes strings or {{{', '.join(repr(f) for f in sorted(allowed))}: str}} "
                        f"dicts (with {', '.join(repr(f) for f in self.fields)})")
            return None
        if len(self.fields) > 1:
            if not isinstance(row, dict) or set(row) != set(self.fields):
                return f"task {self.name!r} takes rows as {{{', '.join(repr(f) for f in self.fields)}: ...}} dicts"
            return None
        if not isinstance(row, str):
            return f"task {self.name!r} takes strings, got {type(row).__name__}"
        return None

    def deterministic(self, options: dict[str, Any]) -> bool:
        """Whether a row's output is decided by the row and the job alone: not when sampling without a seed. Only
        such outputs are stored in the result cache and reused (:mod:`hfqueue.cache`)."""
        return not options.get("do_sample") or options.get("seed") is not None

    def row_identity(self, row: Any) -> bytes | None:
        """The bytes that decide a row's output (the row part of its result-cache key), or None when the row
        cannot be keyed exactly: it is then always computed."""
        return canonical(row)

    def output_types(self, options: dict[str, Any]) -> "dict[str, pa.DataType]":
        """Output column name -> Arrow type; every part of a job has this schema."""
        raise NotImplementedError

    def config_problem(self, config: dict[str, Any]) -> str | None:
        """Why a model with this ``config.json`` cannot run this task, or None."""
        return head_problem(self.name, self.model_class, self.heads, config)

    def options_problem(self, model: str, revision: str | None, config: dict[str, Any],
                        options: dict[str, Any]) -> str | None:
        """Why the job's ``options`` cannot run on this model (whose ``config.json`` is ``config``), or None."""
        return None

    def model_problem(self, model: str, revision: str | None, options: dict[str, Any]) -> str | None:
        """The problem with the model (and the job's options on it) for this task when its config can be read
        now, else None."""
        config = read_config(model, revision)
        if config is None:
            return None
        return self.config_problem(config) or self.options_problem(model, revision, config, options)

    # ---- the worker side ----

    def load(self, model: str, *, revision: str | None, device: str, dtype: str, quantization: str | None,
             trust_remote_code: bool, device_map: str | None = None,
             max_memory: dict[str, str] | None = None) -> LoadedModel:
        """Check the model fits, then load tokenizer/processor and weights once; the worker keeps them.

        ``device_map="auto"`` spreads the weights over the devices accelerate finds (within ``max_memory``)
        instead of putting them on ``device``; inputs then go to the device of the model's first layer.
        """
        import transformers

        transformers.utils.logging.disable_progress_bar()  # a bar per load floods worker logs
        try:
            config = transformers.AutoConfig.from_pretrained(model, revision=revision,
                                                             trust_remote_code=trust_remote_code)
            problem = self.config_problem(config.to_dict())
            if problem:
                raise ModelLoadError(f"model {model!r} cannot run task {self.name!r}: {problem}", value=model)
            processor = self.load_processor(model, revision=revision, trust_remote_code=trust_remote_code)
            net = load_weights(self.auto_class(config), model, config=config, revision=revision, device=device,
                               dtype=dtype, quantization=quantization, trust_remote_code=trust_remote_code,
                               device_map=device_map, max_memory=max_memory)
        except ModelLoadError:
            raise
        except Exception as exc:  # transformers raises OSError, ValueError, KeyError, ... for bad models
            raise ModelLoadError(f"cannot load model {model!r} for task {self.name!r}: {exc}", value=model) from exc
        loaded = LoadedModel(net, processor, input_device(net) if device_map else device,
                             resolved_revision(model, net, revision), devices=placement(net),
                             max_tokens=model_limit(net.config, processor))
        self.setup(loaded)
        return loaded

    def auto_class(self, config: Any) -> str:
        """The ``transformers`` auto class that loads this model for the task."""
        return self.model_class

    def load_processor(self, model: str, *, revision: str | None, trust_remote_code: bool) -> Any:
        """What turns rows into tensors; a tokenizer for text tasks."""
        import transformers

        return transformers.AutoTokenizer.from_pretrained(model, revision=revision,
                                                          trust_remote_code=trust_remote_code)

    def setup(self, loaded: LoadedModel) -> None:
        """Checks and objects built once after loading (e.g. a pipeline); raise ModelLoadError if unfit.

        The loaded model is shared by every job that uses it, so nothing here may depend on a job's options.
        """

    def input_limit(self, loaded: LoadedModel, options: dict[str, Any], max_length: int) -> int:
        """The tokens one row may have: ``max_length`` (HFQ_MAX_LENGTH) or the model's own limit, the smaller."""
        return min(max_length, loaded.max_tokens or max_length)

    def resolved(self, loaded: LoadedModel, options: dict[str, Any], max_length: int) -> dict[str, Any]:
        """What a job with ``options`` takes from this model, for its manifest: the input limit, and what
        subclasses add (an embedding model's pooling, ...)."""
        return {"max_length": self.input_limit(loaded, options, max_length)}

    def prepare(self, loaded: LoadedModel, rows: list[Any], options: dict[str, Any], limit: TokenLimit) -> list[Any]:
        """Turn rows into features, one per row (no padding), each within ``limit`` (rows cut to it are noted in
        ``limit.truncated``). A bad row raises; the worker isolates it."""
        enc = tokenize(loaded.tokenizer, list(rows), limit)
        return [{k: enc[k][i] for k in enc.keys()} for i in range(len(rows))]

    def length(self, feature: Any) -> int:
        """The cost of one feature in tokens, for length-sorted batching under a token budget."""
        return len(feature["input_ids"])

    def collate(self, loaded: LoadedModel, features: list[Any]) -> Any:
        """Pad a batch of prepared rows into tensors on the model's device."""
        batch = loaded.tokenizer.pad(features, return_tensors="pt")
        return {k: v.to(loaded.device) for k, v in batch.items()}

    def forward(self, loaded: LoadedModel, batch: Any, options: dict[str, Any]) -> list[dict[str, Any]]:
        """Run one collated batch; return one output dict per row, in batch order."""
        raise NotImplementedError
