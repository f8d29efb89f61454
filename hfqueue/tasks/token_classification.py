"""token-classification (ner): the entities in each row, grouped into words or spans."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from hfqueue.tasks.base import LoadedModel
from hfqueue.tasks.pipeline_task import PipelineTask

if TYPE_CHECKING:
    import pyarrow as pa


class TokenClassificationOptions(BaseModel):
    """``aggregation_strategy``: how sub-word predictions merge into entities (as in ``pipeline``;
    ``simple`` groups adjacent tokens of one entity; ``none`` keeps one entity per token);
    ``ignore_labels``: labels never reported."""

    model_config = ConfigDict(extra="forbid")
    aggregation_strategy: Literal["none", "simple", "first", "average", "max"] = "simple"
    ignore_labels: list[str] = ["O"]


class TokenClassification(PipelineTask):
    """Output column ``entities``: list of {entity_group, word, start, end, score}; start/end are character
    offsets in the input (null for tokenizers without offsets)."""

    name = "token-classification"
    aliases = ("ner",)
    pipeline_task = "token-classification"
    engines = ("torch", "onnx", "onnx-int8")
    engine_output = "TokenClassifierOutput"
    Options: ClassVar[type[BaseModel]] = TokenClassificationOptions
    model_class = "AutoModelForTokenClassification"
    heads = ("MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES",)
    default_model = ("dbmdz/bert-large-cased-finetuned-conll03-english", "4c53496")

    def output_types(self, options: dict[str, Any]) -> "dict[str, pa.DataType]":
        import pyarrow as pa

        entity = pa.struct([("entity_group", pa.string()), ("word", pa.string()), ("start", pa.int64()),
                            ("end", pa.int64()), ("score", pa.float64())])
        return {"entities": pa.list_(entity)}

    def call_kwargs(self, loaded: LoadedModel, options: dict[str, Any]) -> dict[str, Any]:
        return {"aggregation_strategy": options["aggregation_strategy"], "ignore_labels": options["ignore_labels"]}

    def shape(self, output: Any, options: dict[str, Any]) -> dict[str, Any]:
        return {"entities": [
            {"entity_group": e.get("entity_group", e.get("entity")), "word": e["word"], "start": e.get("start"),
             "end": e.get("end"), "score": float(e["score"])}
            for e in output
        ]}
