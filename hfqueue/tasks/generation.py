"""What the generate-based tasks share: validated generation options and the call to ``model.generate``.

Greedy and beam search give a row the same output whatever batch it lands in. Sampling draws from
the generator seeded with ``seed`` at the start of each batch, so a rerun with the same settings and
the same batch limits gives the same text; it is not independent of the batch a row lands in.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

_SAMPLING_ONLY = ("temperature", "top_p", "top_k")


class GenerationOptions(BaseModel):
    """Options passed to ``model.generate``; unset ones come from the model's generation config."""

    model_config = ConfigDict(extra="forbid")
    max_new_tokens: int | None = Field(None, gt=0, le=32768)
    min_new_tokens: int | None = Field(None, ge=0)
    num_beams: int | None = Field(None, ge=1, le=64)
    do_sample: bool = False
    temperature: float | None = Field(None, gt=0)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    repetition_penalty: float | None = Field(None, gt=0)
    seed: int | None = Field(None, ge=0, description="Seeds sampling, so a rerun gives the same text.")

    @model_validator(mode="after")
    def _coherent(self) -> "GenerationOptions":
        if not self.do_sample:
            given = [name for name in _SAMPLING_ONLY if getattr(self, name) is not None]
            if given:
                raise ValueError(f"{', '.join(given)} only apply when sampling: add do_sample=true or drop them")
        if self.min_new_tokens is not None and self.max_new_tokens is not None \
                and self.min_new_tokens > self.max_new_tokens:
            raise ValueError(f"min_new_tokens ({self.min_new_tokens}) exceeds max_new_tokens ({self.max_new_tokens})")
        return self


def generate_kwargs(options: dict[str, Any]) -> dict[str, Any]:
    """The ``generate`` keyword arguments the options set (``seed`` is not one of them)."""
    keys = GenerationOptions.model_fields.keys() - {"seed"}
    return {k: options[k] for k in keys if options.get(k) is not None}


def generate(loaded: Any, inputs: dict[str, Any], options: dict[str, Any], **extra: Any) -> Any:
    """``model.generate`` on a padded batch with the job's options; seeded first when a seed is set."""
    import torch

    if options.get("seed") is not None:
        torch.manual_seed(options["seed"])
    tokenizer = loaded.tokenizer
    with torch.inference_mode():
        return loaded.model.generate(**inputs, **generate_kwargs(options), pad_token_id=tokenizer.pad_token_id,
                                     **extra)
