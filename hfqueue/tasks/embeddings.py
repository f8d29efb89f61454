"""feature-extraction: one embedding vector per row, pooled from the encoder's last hidden state."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from hfqueue.tasks.base import LoadedModel, TaskAdapter


class EmbeddingOptions(BaseModel):
    """``pooling``: mean over real tokens (default) or the first token (cls); ``normalize``: unit length."""

    model_config = ConfigDict(extra="forbid")
    pooling: Literal["mean", "cls"] = "mean"
    normalize: bool = False


class FeatureExtraction(TaskAdapter):
    """Output column ``embedding``: list of float32, the pooled hidden state."""

    name = "feature-extraction"
    aliases = ("embeddings", "embedding", "sentence-embeddings")
    Options: ClassVar[type[BaseModel]] = EmbeddingOptions
    model_class = "AutoModel"

    def forward(self, loaded: LoadedModel, batch: dict[str, Any], options: dict[str, Any]) -> list[dict[str, Any]]:
        import torch

        with torch.inference_mode():
            hidden = loaded.model(**batch).last_hidden_state.float()
            if options["pooling"] == "cls":
                pooled = hidden[:, 0]
            else:
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            if options["normalize"]:
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return [{"embedding": row} for row in pooled.cpu().numpy()]
