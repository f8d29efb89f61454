"""fill-mask: the most likely tokens for the one mask token in each row."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from hfqueue.errors import ModelLoadError
from hfqueue.tasks.base import LoadedModel
from hfqueue.tasks.limits import TokenLimit
from hfqueue.tasks.pipeline_task import PipelineTask

if TYPE_CHECKING:
    import pyarrow as pa


class FillMaskOptions(BaseModel):
    """``top_k``: how many candidates per row; ``targets``: score only these words."""

    model_config = ConfigDict(extra="forbid")
    top_k: int = Field(5, ge=1, le=1000)
    targets: list[str] | None = Field(None, min_length=1)


class FillMask(PipelineTask):
    """Output column ``predictions``: list of {token_str, score, sequence, token}, best first. Each row must
    hold the model's mask token exactly once (e.g. ``[MASK]`` or ``<mask>``); other rows go to the error file."""

    name = "fill-mask"
    pipeline_task = "fill-mask"
    Options: ClassVar[type[BaseModel]] = FillMaskOptions
    model_class = "AutoModelForMaskedLM"
    heads = ("MODEL_FOR_MASKED_LM_MAPPING_NAMES",)
    default_model = ("distilbert/distilroberta-base", "fb53ab8")

    def output_types(self, options: dict[str, Any]) -> "dict[str, pa.DataType]":
        import pyarrow as pa

        prediction = pa.struct([("token_str", pa.string()), ("score", pa.float64()), ("sequence", pa.string()),
                                ("token", pa.int64())])
        return {"predictions": pa.list_(prediction)}

    def setup(self, loaded: LoadedModel) -> None:
        if loaded.tokenizer.mask_token is None:
            raise ModelLoadError("the model's tokenizer has no mask token, which fill-mask needs", value="mask_token")
        super().setup(loaded)

    def prepare(self, loaded: LoadedModel, rows: list[Any], options: dict[str, Any], limit: TokenLimit) -> list[Any]:
        mask = loaded.tokenizer.mask_token
        for row in rows:
            if row.count(mask) != 1:
                raise ValueError(f"fill-mask needs the mask token {mask} exactly once in each row; "
                                 f"this row has it {row.count(mask)} times")
        return super().prepare(loaded, rows, options, limit)

    def call_kwargs(self, loaded: LoadedModel, options: dict[str, Any]) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"top_k": options["top_k"]}
        if options["targets"]:
            kwargs["targets"] = options["targets"]
        return kwargs

    def shape(self, output: Any, options: dict[str, Any]) -> dict[str, Any]:
        return {"predictions": [{"token_str": p["token_str"], "score": float(p["score"]), "sequence": p["sequence"],
                                 "token": int(p["token"])} for p in output]}
