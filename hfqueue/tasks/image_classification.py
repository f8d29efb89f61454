"""image-classification: the most likely label of each image, optionally the top k."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from hfqueue.tasks.base import LoadedModel
from hfqueue.tasks.limits import TokenLimit
from hfqueue.tasks.identity import media_identity
from hfqueue.tasks.media import decode_image, media_problem
from hfqueue.tasks.pipeline_task import PipelineTask
from hfqueue.tasks.text_classification import label_row, label_types

if TYPE_CHECKING:
    import pyarrow as pa


class ImageClassificationOptions(BaseModel):
    """``top_k``: also list the k best labels (None: all)."""

    model_config = ConfigDict(extra="forbid")
    top_k: int | None = Field(1, ge=1)


class ImageClassification(PipelineTask):
    """Output columns ``label`` and ``score``; ``labels``/``scores`` lists when top_k is not 1. Rows are an
    Image column of a dataset, or image file paths."""

    name = "image-classification"
    pipeline_task = "image-classification"
    fields = ("image",)
    echo_inputs = False
    Options: ClassVar[type[BaseModel]] = ImageClassificationOptions
    model_class = "AutoModelForImageClassification"
    heads = ("MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES",)
    default_model = ("google/vit-base-patch16-224", "3f49326")

    def row_problem(self, row: Any) -> str | None:
        return media_problem(row, "image")

    def row_identity(self, row: Any) -> bytes | None:
        return media_identity(row)  # a path is keyed by the file's contents

    def output_types(self, options: dict[str, Any]) -> "dict[str, pa.DataType]":
        return label_types(options)

    def load_processor(self, model: str, *, revision: str | None, trust_remote_code: bool) -> Any:
        import transformers

        return transformers.AutoImageProcessor.from_pretrained(model, revision=revision,
                                                               trust_remote_code=trust_remote_code)

    def components(self, loaded: LoadedModel) -> dict[str, Any]:
        return {"image_processor": loaded.tokenizer}

    def prepare(self, loaded: LoadedModel, rows: list[Any], options: dict[str, Any], limit: TokenLimit) -> list[Any]:
        # Images are resized to one shape, so every row costs the same.
        return [{"input": decode_image(row), "length": 1} for row in rows]

    def call_kwargs(self, loaded: LoadedModel, options: dict[str, Any]) -> dict[str, Any]:
        return {"top_k": options["top_k"] or loaded.model.config.num_labels}

    def shape(self, output: Any, options: dict[str, Any]) -> dict[str, Any]:
        return label_row([(o["label"], float(o["score"])) for o in output], options["top_k"])
