"""text-classification: the most likely label of each row and its probability."""

from __future__ import annotations

from typing import Any

from hfqueue.tasks.base import LoadedModel, TaskAdapter


class TextClassification(TaskAdapter):
    """Output columns ``label`` (str, from the model's id2label) and ``score`` (float, softmax probability)."""

    name = "text-classification"
    aliases = ("sentiment-analysis",)
    model_class = "AutoModelForSequenceClassification"

    def forward(self, loaded: LoadedModel, batch: dict[str, Any], options: dict[str, Any]) -> list[dict[str, Any]]:
        import torch

        with torch.inference_mode():
            probs = loaded.model(**batch).logits.float().softmax(-1)
        scores, ids = probs.max(-1)
        id2label = loaded.model.config.id2label
        return [
            {"label": id2label[int(i)], "score": float(s)}
            for s, i in zip(scores.cpu().tolist(), ids.cpu().tolist(), strict=True)
        ]
