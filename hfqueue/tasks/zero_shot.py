"""zero-shot-classification: score each row against labels chosen at submit time, with an NLI model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from hfqueue.tasks.base import LoadedModel
from hfqueue.tasks.pipeline_task import PipelineTask

if TYPE_CHECKING:
    import pyarrow as pa


class ZeroShotOptions(BaseModel):
    """``candidate_labels``: the labels to choose from; ``multi_label``: score each label on its own (else
    the scores sum to 1); ``hypothesis_template``: the NLI hypothesis, ``{}`` replaced by a label."""

    model_config = ConfigDict(extra="forbid")
    candidate_labels: list[str] = Field(min_length=1)
    multi_label: bool = False
    hypothesis_template: str = "This example is {}."

    @field_validator("hypothesis_template")
    @classmethod
    def _has_slot(cls, template: str) -> str:
        if "{}" not in template:
            raise ValueError("hypothesis_template needs a {} where the label goes, e.g. 'This text is about {}.'")
        return template


class ZeroShotClassification(PipelineTask):
    """Output columns ``labels`` (the candidate labels, best first) and ``scores`` (same order)."""

    name = "zero-shot-classification"
    pipeline_task = "zero-shot-classification"
    engines = ("torch", "onnx", "onnx-int8")
    engine_output = "SequenceClassifierOutput"
    Options: ClassVar[type[BaseModel]] = ZeroShotOptions
    model_class = "AutoModelForSequenceClassification"
    heads = ("MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",)
    default_model = ("facebook/bart-large-mnli", "d7645e1")

    def output_types(self, options: dict[str, Any]) -> "dict[str, pa.DataType]":
        import pyarrow as pa

        return {"labels": pa.list_(pa.string()), "scores": pa.list_(pa.float64())}

    def config_problem(self, config: dict[str, Any]) -> str | None:
        labels = [str(label).lower() for label in (config.get("id2label") or {}).values()]
        if not any(label.startswith("entail") for label in labels):
            return (f"it is not an NLI model: its labels {labels} have no 'entailment' label "
                    "(use an NLI model such as facebook/bart-large-mnli)")
        return super().config_problem(config)

    def items_per_row(self, options: dict[str, Any]) -> int:
        return len(options["candidate_labels"])  # one NLI pair per candidate label

    def call_kwargs(self, loaded: LoadedModel, options: dict[str, Any]) -> dict[str, Any]:
        return {k: options[k] for k in ("candidate_labels", "multi_label", "hypothesis_template")}

    def shape(self, output: Any, options: dict[str, Any]) -> dict[str, Any]:
        return {"labels": list(output["labels"]), "scores": [float(s) for s in output["scores"]]}
