"""What the generate-based tasks share: validated generation options and the call to ``model.generate``.

Greedy and beam search give a row the same output whatever batch it lands in. Sampling draws from
the generator seeded with ``seed`` at the start of each batch, so a rerun with the same settings and
the same batch limits gives the same text; it is not independent of the batch a row lands in.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hfqueue.tasks.limits import position_limit

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


def finished(loaded: Any, new_tokens: Any, stop: list[str] | None) -> list[tuple[str, str, int]]:
    """Per generated row: its text (cut before the first ``stop`` string), why it ended (``stop``: an end
    token or a stop string; ``length``: max_new_tokens) and how many tokens it generated."""
    tokenizer = loaded.tokenizer
    eos = loaded.model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos] if eos is not None else [tokenizer.eos_token_id])
    out = []
    for row in new_tokens.tolist():
        end = next((i + 1 for i, token in enumerate(row) if token in eos), None)
        ids = row[:end] if end is not None else row
        if end is None and tokenizer.pad_token_id not in eos:
            while ids and ids[-1] == tokenizer.pad_token_id:  # a row stopped by a stop string, padded after
                ids = ids[:-1]
        text = tokenizer.decode(ids, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in stop or []) if i >= 0), default=-1)
        reason = "stop" if end is not None or cut >= 0 else "length"
        out.append((text[:cut] if cut >= 0 else text, reason, len(ids)))
    return out


def generate(loaded: Any, inputs: dict[str, Any], options: dict[str, Any], **extra: Any) -> Any:
    """``model.generate`` on a padded batch with the job's options; seeded first when a seed is set."""
    import torch

    if options.get("seed") is not None:
        torch.manual_seed(options["seed"])
    tokenizer = loaded.tokenizer
    if options.get("stop"):
        extra = {**extra, "stop_strings": options["stop"], "tokenizer": tokenizer}
    with torch.inference_mode():
        return loaded.model.generate(**inputs, **generate_kwargs(options), pad_token_id=tokenizer.pad_token_id,
                                     **extra)


def room_problem(config: dict[str, Any], options: dict[str, Any]) -> str | None:
    """Why ``max_new_tokens`` cannot fit the model's positions (``config`` is its ``config.json``), or None.

    A decoder's prompt and new tokens share the positions; an encoder-decoder's new tokens have the decoder's.
    """
    positions = position_limit(config)
    wanted = options.get("max_new_tokens") or 0
    if positions is not None and wanted >= positions:
        return (f"max_new_tokens={wanted} does not fit: the model has {positions} positions for the prompt and the "
                "generated tokens; ask for fewer new tokens")
    return None
