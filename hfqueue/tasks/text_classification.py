"""text-classification: the most likely label of each row and its score, optionally the top k."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from hfqueue.tasks.base import LoadedModel, Task
from hfqueue.tasks.engines.attach import run_body
from hfqueue.tasks.limits import TokenLimit, tokenize
from hfqueue.tasks.loading import read_json

if TYPE_CHECKING:
    import pyarrow as pa


class ClassificationOptions(BaseModel):
    """``top_k``: also list the k best labels (None: all); ``function_to_apply``: how logits become scores
    (auto: sigmoid for multi-label or single-logit models, else softmax, as ``pipeline`` does)."""

    model_config = ConfigDict(extra="forbid")
    top_k: int | None = Field(1, ge=1)
    function_to_apply: Literal["auto", "softmax", "sigmoid", "none"] = "auto"


def label_types(options: dict[str, Any]) -> "dict[str, pa.DataType]":
    """``label``/``score`` of the best label, plus ranked ``labels``/``scores`` lists when top_k is not 1."""
    import pyarrow as pa

    types = {"label": pa.string(), "score": pa.float64()}
    if options["top_k"] != 1:
        types.update(labels=pa.list_(pa.string()), scores=pa.list_(pa.float64()))
    return types


def label_row(ranked: list[tuple[str, float]], top_k: int | None) -> dict[str, Any]:
    """One output row from (label, score) pairs sorted best first."""
    row: dict[str, Any] = {"label": ranked[0][0], "score": ranked[0][1]}
    if top_k != 1:
        kept = ranked[:top_k]
        row.update(labels=[label for label, _ in kept], scores=[score for _, score in kept])
    return row


_ACTIVATIONS = {"sigmoid": "sigmoid", "identity": "none", "softmax": "softmax"}


class TextClassification(Task):
    """Output columns ``label`` (str, from the model's id2label) and ``score``; ``labels``/``scores`` with top_k."""

    name = "text-classification"
    aliases = ("sentiment-analysis",)
    engines = ("torch", "onnx", "onnx-int8")
    Options: ClassVar[type[BaseModel]] = ClassificationOptions
    model_class = "AutoModelForSequenceClassification"
    heads = ("MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",)
    default_model = ("distilbert/distilbert-base-uncased-finetuned-sst-2-english", "714eb0f")

    optional_fields = ("text_pair",)  # sentence pairs: cross-encoders (rerankers) and NLI models

    def output_types(self, options: dict[str, Any]) -> "dict[str, pa.DataType]":
        return label_types(options)

    def load(self, model: str, **kwargs: Any) -> LoadedModel:
        loaded = super().load(model, **kwargs)
        # A sentence-transformers CrossEncoder names the activation its scores go through (Sigmoid by default,
        # Identity for rerankers scored by raw logits): "auto" follows it, as CrossEncoder.predict does.
        saved = read_json(model, kwargs.get("revision"), "config_sentence_transformers.json") or {}
        activation = str(saved.get("activation_fn") or "").rsplit(".", 1)[-1].lower()
        loaded.extra["activation"] = _ACTIVATIONS.get(activation) if saved.get("model_type") == "CrossEncoder" \
            else None
        return loaded

    def prepare(self, loaded: LoadedModel, rows: list[Any], options: dict[str, Any], limit: TokenLimit) -> list[Any]:
        features: list[Any] = [None] * len(rows)
        pairs = [row.get("text_pair") if isinstance(row, dict) else None for row in rows]
        for paired in (False, True):  # rows with and without a text_pair tokenize apart
            index = [i for i, pair in enumerate(pairs) if (pair is not None) == paired]
            if not index:
                continue
            part = TokenLimit(limit.tokens, limit.truncate)
            texts = [rows[i]["text"] if isinstance(rows[i], dict) else rows[i] for i in index]
            enc = tokenize(loaded.tokenizer, texts, part, [str(pairs[i]) for i in index] if paired else None)
            for j, i in enumerate(index):
                features[i] = {k: enc[k][j] for k in enc.keys()}
            limit.truncated.update(index[j] for j in part.truncated)
        return features

    def forward(self, loaded: LoadedModel, batch: dict[str, Any], options: dict[str, Any]) -> list[dict[str, Any]]:
        import torch

        config = loaded.model.config
        function = options["function_to_apply"]
        if function == "auto":
            multi = config.problem_type == "multi_label_classification" or config.num_labels == 1
            function = loaded.extra.get("activation") or ("sigmoid" if multi else "softmax")
        with torch.inference_mode():
            logits = run_body(loaded, batch).float()
        scores = {"softmax": logits.softmax(-1), "sigmoid": logits.sigmoid(), "none": logits}[function]
        values, ids = scores.sort(-1, descending=True)
        return [label_row([(config.id2label[int(i)], float(v)) for v, i in zip(vs, is_, strict=True)],
                          options["top_k"])
                for vs, is_ in zip(values.cpu().tolist(), ids.cpu().tolist(), strict=True)]
