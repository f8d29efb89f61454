"""Tasks that run through a ``transformers.pipeline`` built once around the resident model.

The pipeline does the task's pre- and post-processing (offsets and entity grouping, NLI pairs, mask
filling, image and audio features); hfqueue still forms the batches, so each call gets one batch of
similar-length rows and ``batch_size`` equal to it.
"""

from __future__ import annotations

from typing import Any, ClassVar

from hfqueue.tasks.base import LoadedModel, Task
from hfqueue.tasks.limits import TokenLimit, tokenize


class PipelineTask(Task):
    """A task backed by ``pipeline(pipeline_task)``; subclasses shape each pipeline output."""

    pipeline_task: ClassVar[str]

    def setup(self, loaded: LoadedModel) -> None:
        from transformers import pipeline

        loaded.extra["pipe"] = pipeline(self.pipeline_task, model=loaded.model, **self.components(loaded))

    def components(self, loaded: LoadedModel) -> dict[str, Any]:
        """The pre-processors handed to ``pipeline``; a tokenizer for text tasks."""
        return {"tokenizer": loaded.tokenizer}

    def prepare(self, loaded: LoadedModel, rows: list[Any], options: dict[str, Any], limit: TokenLimit) -> list[Any]:
        # Tokenized here to measure length for batching and to find rows over the limit; the pipeline
        # tokenizes again itself, truncating at its tokenizer's model_max_length, which is set to the limit.
        loaded.tokenizer.model_max_length = limit.tokens
        enc = tokenize(loaded.tokenizer, list(rows), limit)
        per_row = self.items_per_row(options)
        return [{"input": row, "length": len(ids) * per_row} for row, ids in zip(rows, enc["input_ids"], strict=True)]

    def items_per_row(self, options: dict[str, Any]) -> int:
        """Model inputs the pipeline makes of one row (zero-shot: one NLI pair per label); batches pay for these."""
        return 1

    def length(self, feature: Any) -> int:
        return int(feature["length"])

    def collate(self, loaded: LoadedModel, features: list[Any]) -> Any:
        return [f["input"] for f in features]

    def forward(self, loaded: LoadedModel, batch: Any, options: dict[str, Any]) -> list[dict[str, Any]]:
        pipe, kwargs = loaded.extra["pipe"], self.call_kwargs(loaded, options)
        # Some pipelines unwrap a one-element list; a lone row is passed bare and its output wrapped.
        size = len(batch) * self.items_per_row(options)
        outputs = [pipe(batch[0], **kwargs)] if len(batch) == 1 else pipe(batch, batch_size=size, **kwargs)
        return [self.shape(out, options) for out in outputs]

    def call_kwargs(self, loaded: LoadedModel, options: dict[str, Any]) -> dict[str, Any]:
        """Keyword arguments of each pipeline call."""
        return {}

    def shape(self, output: Any, options: dict[str, Any]) -> dict[str, Any]:
        """One output row from the pipeline's output for one input."""
        raise NotImplementedError
