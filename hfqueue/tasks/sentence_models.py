"""A sentence-transformers model's own configuration, read from its folder or Hub repo without torch.

A model saved by sentence-transformers carries ``modules.json`` (its module chain: Transformer, Pooling,
Dense, Normalize, ...), each module's config, and ``config_sentence_transformers.json`` (prompts). hfqueue
runs such a model with sentence-transformers' own module code on hfqueue's batches (see
:mod:`hfqueue.tasks.embeddings`). This module reads that layout, so a job the model cannot serve is
refused at submit, naming what is wrong, before anything is enqueued.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hfqueue.tasks.loading import read_json

# Module classes hfqueue runs, by the last part of their type name in modules.json (sentence-transformers 2-6
# write "sentence_transformers.models.Pooling", "sentence_transformers.sentence_transformer.modules.Pooling",
# ...). The first module must be a Transformer: rows are tokenized and batched by hfqueue through it.
INPUT_MODULE = "Transformer"
LATER_MODULES = frozenset({"Pooling", "Dense", "Normalize", "LayerNorm", "Dropout"})


@dataclass
class SentenceModel:
    """What ``modules.json`` and ``config_sentence_transformers.json`` say about a sentence-transformers model."""

    modules: list[dict[str, Any]]
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None

    @property
    def kinds(self) -> list[str]:
        """Each module's class name, in order (e.g. ``["Transformer", "Pooling", "Normalize"]``)."""
        return [str(m.get("type", "")).rsplit(".", 1)[-1] for m in self.modules]

    def unsupported(self) -> str | None:
        """Why hfqueue cannot run this module chain with the model's exact semantics, or None."""
        for i, module in enumerate(self.modules):
            kind, name = self.kinds[i], str(module.get("type"))
            known = name.startswith("sentence_transformers.") and (
                kind == INPUT_MODULE if i == 0 else kind in LATER_MODULES)
            if not known:
                where = f"module {i} ({module.get('path') or 'the top folder'})"
                return (f"its sentence-transformers {where} is {name}, which hfqueue cannot run exactly (it runs a "
                        f"{INPUT_MODULE} first, then {', '.join(sorted(LATER_MODULES))}); embed it with "
                        "sentence-transformers itself")
        return None

    def prompt_problem(self, prompt_name: str | None) -> str | None:
        """Why ``prompt_name`` is not one of the model's prompts, or None."""
        if prompt_name is None or prompt_name in self.prompts:
            return None
        known = ", ".join(repr(p) for p in self.prompts) or "none"
        return f"the model has no prompt named {prompt_name!r}; its prompts: {known}"


def read_sentence_model(model: str, revision: str | None) -> SentenceModel | None:
    """The model's sentence-transformers layout; None when it has no ``modules.json`` (or it cannot be read now)."""
    modules = read_json(model, revision, "modules.json")
    if not isinstance(modules, list):
        return None
    config = read_json(model, revision, "config_sentence_transformers.json") or {}
    return SentenceModel(modules, dict(config.get("prompts") or {}), config.get("default_prompt_name") or None)


def dimension(model: str, revision: str | None, layout: SentenceModel | None, config: dict[str, Any]) -> int | None:
    """The length of the model's sentence vectors, from its files: the last Dense layer's outputs, else the
    Pooling layer's, else the hidden size; None when unknown."""
    for module, kind in zip(reversed(layout.modules if layout else []), reversed(layout.kinds if layout else []),
                            strict=True):
        path = str(module.get("path") or "")
        if kind == "Dense":
            dense = read_json(model, revision, f"{path}/config.json") or {}
            return dense.get("out_features")
        if kind == "Pooling":
            pooling = read_json(model, revision, f"{path}/config.json") or {}
            width = pooling.get("embedding_dimension") or pooling.get("word_embedding_dimension")
            modes = pooling.get("pooling_mode")
            count = len(modes) if isinstance(modes, list) else 1 if modes else max(1, sum(
                1 for k, v in pooling.items() if k.startswith("pooling_mode_") and v is True))
            return width * count if width else None
    text = config.get("text_config") or config
    return text.get("hidden_size") or text.get("d_model") or text.get("n_embd")
