"""feature-extraction: one embedding per row, pooled from the encoder's last hidden state."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from hfqueue.tasks.base import LoadedModel, TaskAdapter

if TYPE_CHECKING:
    import pyarrow as pa


class EmbeddingOptions(BaseModel):
    """``pooling``: mean over real tokens (default), the first token (cls), or none (one vector per token);
    ``normalize``: scale each vector to unit length."""

    model_config = ConfigDict(extra="forbid")
    pooling: Literal["mean", "cls", "none"] = "mean"
    normalize: bool = False


class FeatureExtraction(TaskAdapter):
    """Output columns ``embedding`` (list of float32 when pooled, a list of such lists per token with pooling
    none) and ``input_tokens`` (tokens the row had after truncation)."""

    name = "feature-extraction"
    aliases = ("embeddings", "embedding", "sentence-embeddings")
    Options: ClassVar[type[BaseModel]] = EmbeddingOptions
    model_class = "AutoModel"
    default_model = ("distilbert/distilbert-base-cased", "6ea8117")

    def output_types(self, options: dict[str, Any]) -> "dict[str, pa.DataType]":
        import pyarrow as pa

        vector = pa.list_(pa.float32())
        return {"embedding": pa.list_(vector) if options["pooling"] == "none" else vector,
                "input_tokens": pa.int32()}

    def forward(self, loaded: LoadedModel, batch: dict[str, Any], options: dict[str, Any]) -> list[dict[str, Any]]:
        import torch

        with torch.inference_mode():
            hidden = loaded.model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"]
            tokens = mask.sum(dim=1).tolist()
            if options["pooling"] == "none":
                if options["normalize"]:
                    hidden = torch.nn.functional.normalize(hidden, p=2, dim=-1)
                # Padding positions are dropped; which side they are on depends on the tokenizer.
                return [{"embedding": hidden[i][mask[i].bool()].cpu().tolist(), "input_tokens": tokens[i]}
                        for i in range(hidden.shape[0])]
            if options["pooling"] == "cls":
                pooled = hidden[:, 0]
            else:
                weights = mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
            if options["normalize"]:
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return [{"embedding": row, "input_tokens": n} for row, n in zip(pooled.cpu().numpy(), tokens, strict=True)]
