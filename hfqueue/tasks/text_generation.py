"""text-generation: continue each prompt with a causal LM's ``generate``; chat rows use the chat template.

A row is a plain prompt (a string) or a conversation (a list of ``{"role", "content"}`` messages),
which goes through the tokenizer's chat template with the generation prompt added. Prompts are
left-padded, as decoder-only generation needs, and cut from the left when longer than the limit so
the end of a conversation, the part being answered, is kept.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, ClassVar

from pydantic import BaseModel, Field

from hfqueue.errors import ModelLoadError
from hfqueue.tasks.base import LoadedModel, Task
from hfqueue.tasks.generation import GenerationOptions, finished, generate, room_problem
from hfqueue.tasks.limits import TokenLimit, position_limit, tokenize

if TYPE_CHECKING:
    import pyarrow as pa


class TextGenerationOptions(GenerationOptions):
    """Generation options, plus ``return_full_text`` (prompt + continuation), ``as_chat`` (send plain
    string prompts through the chat template as one user message) and ``stop`` (up to 4 strings that end
    the text; the text is cut before them). ``max_new_tokens`` defaults to 256."""

    max_new_tokens: int | None = Field(256, gt=0, le=32768)
    return_full_text: bool = False
    as_chat: bool = False
    stop: list[Annotated[str, Field(min_length=1)]] | None = Field(None, min_length=1, max_length=4)


class TextGeneration(Task):
    """Output columns ``generated_text`` (the continuation, or prompt + continuation with return_full_text),
    ``finish_reason`` (``stop`` or ``length``), ``prompt_tokens`` and ``completion_tokens``."""

    name = "text-generation"
    Options: ClassVar[type[BaseModel]] = TextGenerationOptions
    model_class = "AutoModelForCausalLM"
    heads = ("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",)
    default_model = ("HuggingFaceTB/SmolLM3-3B", "a07cc9a")

    def row_problem(self, row: Any) -> str | None:
        if isinstance(row, str):
            return None
        if isinstance(row, list) and row and all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in row):
            return None
        return "text-generation takes a prompt string or a non-empty list of {'role': ..., 'content': ...} messages"

    def output_types(self, options: dict[str, Any]) -> "dict[str, pa.DataType]":
        import pyarrow as pa

        return {"generated_text": pa.string(), "finish_reason": pa.string(), "prompt_tokens": pa.int32(),
                "completion_tokens": pa.int32()}

    def setup(self, loaded: LoadedModel) -> None:
        tokenizer = loaded.tokenizer
        tokenizer.padding_side = "left"
        tokenizer.truncation_side = "left"
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise ModelLoadError("the tokenizer has neither a pad nor an eos token to pad prompts with",
                                     value="pad_token")
            tokenizer.pad_token = tokenizer.eos_token

    def prepare(self, loaded: LoadedModel, rows: list[Any], options: dict[str, Any], limit: TokenLimit) -> list[Any]:
        tokenizer = loaded.tokenizer
        features = []
        for i, row in enumerate(rows):
            problem = self.row_problem(row)
            if problem:
                raise ValueError(problem)
            messages = [{"role": "user", "content": row}] if options["as_chat"] and isinstance(row, str) else row
            if isinstance(messages, list):
                if not tokenizer.chat_template:
                    raise ModelLoadError("chat rows need a chat template, and this model's tokenizer has none; "
                                         "send plain prompt strings instead", value="chat_template")
                text, special = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                              tokenize=False), False
            else:
                text, special = messages, True
            one = TokenLimit(limit.tokens, limit.truncate)  # prompts cut from the left: see setup
            enc = tokenize(tokenizer, [text], one, add_special_tokens=special)
            if one.truncated:
                limit.truncated.add(i)
            features.append({k: v[0] for k, v in enc.items()})
        return features

    def options_problem(self, model: str, revision: str | None, config: dict[str, Any],
                        options: dict[str, Any]) -> str | None:
        return room_problem(config, options)

    def input_limit(self, loaded: LoadedModel, options: dict[str, Any], max_length: int) -> int:
        # The prompt and what is generated share the positions: keep room for max_new_tokens.
        limit = super().input_limit(loaded, options, max_length)
        positions = position_limit(loaded.model.config)
        return limit if positions is None else max(1, min(limit, positions - (options["max_new_tokens"] or 0)))

    def forward(self, loaded: LoadedModel, batch: dict[str, Any], options: dict[str, Any]) -> list[dict[str, Any]]:
        out = generate(loaded, batch, options)
        width = batch["input_ids"].shape[1]  # left padding: every prompt ends at the same column
        ends = finished(loaded, out[:, width:], options.get("stop"))
        prompt_tokens = batch["attention_mask"].sum(dim=1).tolist()
        prompts = loaded.tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=True) \
            if options["return_full_text"] else [""] * len(ends)
        return [{"generated_text": prompt + text, "finish_reason": reason, "prompt_tokens": int(n_prompt),
                 "completion_tokens": n}
                for prompt, (text, reason, n), n_prompt in zip(prompts, ends, prompt_tokens, strict=True)]
