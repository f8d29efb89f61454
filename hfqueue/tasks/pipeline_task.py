"""Tasks that run through a ``transformers.pipeline`` built once around the resident model.

The pipeline does the task's pre- and post-processing (offsets and entity grouping, NLI pairs, mask
filling, image and audio features); hfqueue still forms the batches, so each call gets one batch of
similar-length rows and ``batch_size`` equal to it.

With an engine attached (hfqueue.tasks.engines), the pipeline's model call goes to it: the pipeline is given
an :class:`EngineModel` in place of its module, so its own pre- and post-processing run as on torch.
"""

from __future__ import annotations

from typing import Any, ClassVar

from hfqueue.tasks.base import LoadedModel, Task
from hfqueue.tasks.engines.attach import engine_of
from hfqueue.tasks.engines.runtime import OrtEncoder
from hfqueue.tasks.limits import TokenLimit, tokenize


class EngineModel:
    """The pipeline's model with its call run on an engine: ``model(**inputs)`` gives ``output(logits=...)``
    from the engine, and every other attribute (config and its labels, device, dtype, name) is the torch model's.

    Why the module and not the pipeline's ``_forward``: each pipeline's ``_forward`` pops its own bookkeeping
    keys and reads the output its own way, while all of them call ``self.model(**inputs)`` and read ``logits``
    from a ModelOutput; replacing that call keeps every pipeline's code path, on transformers' side, as it is.
    """

    def __init__(self, model: Any, encoder: OrtEncoder, output: type) -> None:
        self.model, self.encoder, self.output = model, encoder, output

    def forward(self, input_ids: Any, attention_mask: Any = None, token_type_ids: Any = None) -> Any:
        """The engine's logits for one padded batch, as the torch head's ModelOutput holds them."""
        import torch

        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        return self.output(logits=self.encoder(input_ids, mask, token_type_ids))

    __call__ = forward

    def __getattr__(self, name: str) -> Any:  # only for what this class lacks: the torch model answers
        if name == "model":  # not set yet (a copy being built): without this, the lookup below recurses
            raise AttributeError(name)
        return getattr(self.model, name)


class PipelineTask(Task):
    """A task backed by ``pipeline(pipeline_task)``; subclasses shape each pipeline output."""

    pipeline_task: ClassVar[str]
    # The ModelOutput class (in transformers.modeling_outputs) of its head, for tasks whose body may run on an engine.
    engine_output: ClassVar[str] = ""

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

    def pipeline(self, loaded: LoadedModel) -> Any:
        """The pipeline, its model call routed to the engine when one is attached.

        Routed here, on first use, because the worker's model cache attaches the engine after ``load`` (and
        ``setup``) return; each engine has its own loaded model and pipeline, so the swap is made once."""
        pipe, encoder = loaded.extra["pipe"], engine_of(loaded)
        if encoder is not None and not isinstance(pipe.model, EngineModel):
            import transformers.modeling_outputs

            pipe.model = EngineModel(pipe.model, encoder, getattr(transformers.modeling_outputs, self.engine_output))
        return pipe

    def forward(self, loaded: LoadedModel, batch: Any, options: dict[str, Any]) -> list[dict[str, Any]]:
        pipe, kwargs = self.pipeline(loaded), self.call_kwargs(loaded, options)
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
