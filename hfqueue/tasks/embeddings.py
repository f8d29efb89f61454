"""feature-extraction: one vector per row, exactly as the model's own library embeds it.

A sentence-transformers model (its folder or repo has ``modules.json``) is loaded by sentence-transformers
and run with its own module code: its Transformer tokenizes (``max_seq_length``, ``do_lower_case``, prompts
and their length), its Pooling, Dense and Normalize modules turn token vectors into the sentence vector.
Only the batching is hfqueue's: rows are tokenized once, then sorted by length and grouped under the
token budget, padded per batch and passed through the modules. Running the library's modules rather than
re-implementing them keeps every pooling mode, ``include_prompt`` and future fix exactly the library's.

Any other model runs through ``AutoModel``; its token vectors are pooled by sentence-transformers' Pooling
module (mean unless ``pooling`` says otherwise).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hfqueue.errors import ModelLoadError
from hfqueue.tasks import sentence_models
from hfqueue.tasks.base import LoadedModel, Task
from hfqueue.tasks.engines.attach import engine_of, run_body
from hfqueue.tasks.limits import TokenLimit, model_limit, tokenize
from hfqueue.tasks.loading import placement, resolved_revision

if TYPE_CHECKING:
    import pyarrow as pa

PoolingMode = Literal["cls", "mean", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken", "none"]


class EmbeddingOptions(BaseModel):
    """Each option left unset takes the model's own value (a sentence-transformers model's configuration).

    ``pooling``: how token vectors become one (``none``: a vector per token); default the model's Pooling
    module, else mean. ``normalize``: unit length; default whether the model has a Normalize module.
    ``prompt_name``: one of the model's prompts (default its ``default_prompt_name``); ``prompt``: a literal
    prompt put before each row. ``dimensions``: keep the first N values (Matryoshka), renormalized when the
    vectors are normalized.
    """

    model_config = ConfigDict(extra="forbid")
    pooling: PoolingMode | None = None
    normalize: bool | None = None
    prompt_name: str | None = Field(None, min_length=1)
    prompt: str | None = None
    dimensions: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _coherent(self) -> "EmbeddingOptions":
        if self.prompt is not None and self.prompt_name is not None:
            raise ValueError("give `prompt` (a literal prompt) or `prompt_name` (one of the model's), not both")
        if self.dimensions is not None and self.pooling == "none":
            raise ValueError("`dimensions` shortens sentence vectors; it does not apply with pooling='none'")
        return self


class FeatureExtraction(Task):
    """Output columns ``embedding`` (list of float32; a list of such lists per token with pooling none) and
    ``input_tokens`` (tokens the row had after truncation, prompt included)."""

    name = "feature-extraction"
    aliases = ("embeddings", "embedding", "sentence-embeddings")
    engines = ("torch", "onnx", "onnx-int8")
    Options: ClassVar[type[BaseModel]] = EmbeddingOptions
    model_class = "AutoModel"
    # A sentence-transformers model, pinned like the pipelines pin theirs: a batch embedding job wants sentence
    # vectors, not the token features of a plain encoder.
    default_model = ("sentence-transformers/all-MiniLM-L6-v2", "c9745ed1d9f207416be6d2e6f8de32d1f16199bf")

    def output_types(self, options: dict[str, Any]) -> "dict[str, pa.DataType]":
        import pyarrow as pa

        vector = pa.list_(pa.float32())
        return {"embedding": pa.list_(vector) if options["pooling"] == "none" else vector,
                "input_tokens": pa.int32()}

    # ---- submit time ----

    def options_problem(self, model: str, revision: str | None, config: dict[str, Any],
                        options: dict[str, Any]) -> str | None:
        layout = sentence_models.read_sentence_model(model, revision)
        if layout is not None:
            problem = layout.unsupported() or layout.prompt_problem(options["prompt_name"])
            if problem:
                return problem
        elif options["prompt_name"] is not None:
            return (f"prompt_name {options['prompt_name']!r} names a prompt of a sentence-transformers model, and this "
                    "model has none (no modules.json); give the text with `prompt` instead")
        wanted, width = options["dimensions"], sentence_models.dimension(model, revision, layout, config)
        if wanted is not None and width is not None and wanted > width:
            return f"dimensions={wanted} is more than the model's {width}-value vectors; ask for at most {width}"
        return None

    # ---- the worker side ----

    def load(self, model: str, *, revision: str | None, device: str, dtype: str, quantization: str | None,
             trust_remote_code: bool, device_map: str | None = None,
             max_memory: dict[str, str] | None = None) -> LoadedModel:
        layout = sentence_models.read_sentence_model(model, revision)
        if layout is None:
            return super().load(model, revision=revision, device=device, dtype=dtype, quantization=quantization,
                                trust_remote_code=trust_remote_code, device_map=device_map, max_memory=max_memory)
        problem = layout.unsupported()
        if problem:
            raise ModelLoadError(f"model {model!r} cannot run task {self.name!r}: {problem}", value=model)
        if quantization or device_map:
            raise ModelLoadError(f"model {model!r} is a sentence-transformers model, which hfqueue loads whole on one "
                                 "device: submit it without quantization, on a worker without HFQ_DEVICE_MAP",
                                 value=model)
        return _load_sentence_model(model, revision=revision, device=device, dtype=dtype,
                                    trust_remote_code=trust_remote_code)

    def resolved(self, loaded: LoadedModel, options: dict[str, Any], max_length: int) -> dict[str, Any]:
        st = loaded.extra.get("st")
        return {**super().resolved(loaded, options, max_length), "pooling": _pooling(loaded, options),
                "normalize": _normalizes(loaded, options), "prompt": _prompt(loaded, options),
                "dimensions": options["dimensions"],
                "modules": [type(m).__name__ for m in st] if st is not None else None}

    def prepare(self, loaded: LoadedModel, rows: list[Any], options: dict[str, Any], limit: TokenLimit) -> list[Any]:
        st, prompt = loaded.extra.get("st"), _prompt(loaded, options)
        if options["dimensions"] is not None and options["dimensions"] > _width(loaded):
            raise ModelLoadError(f"dimensions={options['dimensions']} is more than the model's {_width(loaded)}-value "
                                 "vectors", value=options["dimensions"])
        if st is None:
            enc = tokenize(loaded.tokenizer, [(prompt or "") + row for row in rows], limit)
            return [{"tokens": {k: enc[k][i] for k in enc.keys()}, "extra": {}} for i in range(len(rows))]
        return _st_features(st, rows, prompt, limit)

    def length(self, feature: Any) -> int:
        return len(feature["tokens"]["input_ids"])

    def collate(self, loaded: LoadedModel, features: list[Any]) -> Any:
        batch = loaded.tokenizer.pad([f["tokens"] for f in features], return_tensors="pt")
        return {**{k: v.to(loaded.device) for k, v in batch.items()}, **features[0]["extra"]}

    def forward(self, loaded: LoadedModel, batch: dict[str, Any], options: dict[str, Any]) -> list[dict[str, Any]]:
        import torch

        pooling, normalize = _pooling(loaded, options), _normalizes(loaded, options)
        mask = batch["attention_mask"]
        tokens = mask.sum(dim=1).tolist()
        with torch.inference_mode():
            features = _run_modules(loaded, batch, pooling, normalize)
            if pooling == "none":
                hidden = features["token_embeddings"].float()
                if normalize:
                    hidden = torch.nn.functional.normalize(hidden, p=2, dim=-1)
                # Padding positions are dropped; which side they are on depends on the tokenizer.
                return [{"embedding": hidden[i][mask[i].bool()].cpu().tolist(), "input_tokens": tokens[i]}
                        for i in range(hidden.shape[0])]
            vectors = features["sentence_embedding"].float()
            if options["dimensions"] is not None:
                vectors = vectors[:, :options["dimensions"]]
            if normalize:  # after the cut too, as sentence-transformers' truncate_dim + normalize_embeddings do
                vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
        return [{"embedding": row, "input_tokens": n} for row, n in zip(vectors.cpu().numpy(), tokens, strict=True)]


def _load_sentence_model(model: str, *, revision: str | None, device: str, dtype: str,
                         trust_remote_code: bool) -> LoadedModel:
    """Load a sentence-transformers model with sentence-transformers; the LoadedModel's model is its transformer
    (PEFT adapters apply to it in place), and ``extra["st"]`` the whole module chain."""
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    transformers.utils.logging.disable_progress_bar()
    model_kwargs = {} if dtype == "auto" else {"dtype": getattr(torch, dtype)}
    try:
        st = SentenceTransformer(model, device=device, revision=revision, trust_remote_code=trust_remote_code,
                                 model_kwargs=model_kwargs)
    except Exception as exc:  # sentence-transformers raises OSError, ValueError, ... for bad folders
        raise ModelLoadError(f"cannot load model {model!r} for task feature-extraction: {exc}", value=model) from exc
    st.eval()
    net: Any = st[0].auto_model
    tokenizer = st[0].tokenizer
    return LoadedModel(net, tokenizer, device, resolved_revision(model, net, revision), extra={"st": st},
                       devices=placement(net), max_tokens=model_limit(net.config, tokenizer, st.max_seq_length))


def _st_features(st: Any, rows: list[str], prompt: str | None, limit: TokenLimit) -> list[dict[str, Any]]:
    """Rows tokenized by the model's own Transformer module (lower-casing, prompt, prompt length), one past the
    limit so that rows to cut show themselves; those are tokenized again at the limit. Unpadded per row."""
    out = _unpad(st.preprocess(rows, prompt=prompt, max_length=limit.tokens + 1))
    long = [i for i, f in enumerate(out) if len(f["tokens"]["input_ids"]) > limit.tokens]
    if long and not limit.truncate:
        full = st.preprocess([rows[long[0]]], prompt=prompt, max_length=1 << 30)
        raise limit.too_long(int(full["attention_mask"].sum()))
    if long:
        for i, feature in zip(long, _unpad(st.preprocess([rows[i] for i in long], prompt=prompt,
                                                          max_length=limit.tokens)), strict=True):
            out[i] = feature
        limit.truncated.update(long)
    return out


def _unpad(processed: dict[str, Any]) -> list[dict[str, Any]]:
    """Split a padded batch from ``preprocess`` into one feature per row: its tokens without padding, and the
    values that hold for the whole batch (``modality``, ``prompt_length``)."""
    import torch

    mask = processed["attention_mask"].bool()
    per_row = {k for k, v in processed.items() if isinstance(v, torch.Tensor) and v.shape == mask.shape}
    extra = {k: v for k, v in processed.items() if k not in per_row}
    return [{"tokens": {k: processed[k][i][mask[i]].tolist() for k in per_row}, "extra": extra}
            for i in range(mask.shape[0])]


def _run_modules(loaded: LoadedModel, batch: dict[str, Any], pooling: str, normalize: bool) -> dict[str, Any]:
    """Token vectors, and unless ``pooling`` is none the sentence vector, from the model's modules in order:
    a Pooling module of the asked mode replaces the model's, a Normalize module runs only if ``normalize``."""
    from sentence_transformers.base.modules import Normalize
    from sentence_transformers.sentence_transformer.modules import Pooling

    st = loaded.extra.get("st")
    body = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    if st is None:  # a plain transformers model: its last hidden state, pooled by sentence-transformers' Pooling
        features = {"token_embeddings": run_body(loaded, body), "attention_mask": batch["attention_mask"]}
        return features if pooling == "none" else Pooling(features["token_embeddings"].shape[-1], pooling)(features)
    features, modules = dict(batch), list(st)
    if engine_of(loaded) is not None:  # the engine stands in for the Transformer module's forward
        features["token_embeddings"], modules = run_body(loaded, body), modules[1:]
    for module in modules:
        if isinstance(module, Pooling):
            if pooling == "none":
                return features
            if pooling != module.pooling_mode:
                module = Pooling(module.embedding_dimension, pooling, include_prompt=module.include_prompt)
        if isinstance(module, Normalize) and not normalize:
            continue
        features = module(features)
    return features


def _pooling(loaded: LoadedModel, options: dict[str, Any]) -> str:
    """The pooling a job runs: its option, else the model's Pooling module's mode, else mean."""
    from sentence_transformers.sentence_transformer.modules import Pooling

    if options["pooling"] is not None:
        return str(options["pooling"])
    modes = [m.pooling_mode for m in loaded.extra.get("st") or () if isinstance(m, Pooling)]
    if not modes:
        return "mean" if "st" not in loaded.extra else "none"
    return modes[0] if isinstance(modes[0], str) else "+".join(modes[0])


def _normalizes(loaded: LoadedModel, options: dict[str, Any]) -> bool:
    """Whether vectors end unit length: the job's option, else whether the model has a Normalize module."""
    from sentence_transformers.base.modules import Normalize

    if options["normalize"] is not None:
        return bool(options["normalize"])
    return any(isinstance(m, Normalize) for m in loaded.extra.get("st") or ())


def _prompt(loaded: LoadedModel, options: dict[str, Any]) -> str | None:
    """The prompt put before each row: the literal one, the named one, else the model's default (as
    ``SentenceTransformer.encode`` resolves them)."""
    st = loaded.extra.get("st")
    if st is None:
        if options["prompt_name"] is not None:
            raise ModelLoadError(f"prompt_name {options['prompt_name']!r}: the model has no prompts (it is not a "
                                 "sentence-transformers model); give the text with `prompt`", value="prompt_name")
        return options["prompt"]
    if options["prompt_name"] is not None and options["prompt_name"] not in st.prompts:
        known = ", ".join(repr(p) for p in st.prompts) or "none"
        raise ModelLoadError(f"the model has no prompt named {options['prompt_name']!r}; its prompts: {known}",
                             value="prompt_name")
    return st._resolve_prompt(options["prompt"], options["prompt_name"]) or None


def _width(loaded: LoadedModel) -> int:
    """The length of the model's sentence vectors."""
    st = loaded.extra.get("st")
    return int(st.get_embedding_dimension() if st is not None else loaded.model.config.hidden_size)
