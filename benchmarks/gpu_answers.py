"""How ``make gpu-check`` compares a GPU answer with the CPU float32 one: vectors by cosine, and greedy text by how far
each of its tokens is from the float32 model's own greedy choice.

Greedy text cannot be asked to equal float32's exactly: where two next tokens score within the precision's error of
each other, float16 or bfloat16 may take the other one, and the rest of the text follows from there. So a
reduced-precision text passes when, teacher-forcing the float32 model along it, every token it took is float32's
greedy token or one scoring within ``tie`` logits of it. A bug (wrong padding, positions, a mangled cache) takes tokens
float32 scores far lower, and fails.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np


def vectors(ds: Any) -> np.ndarray:
    """The ``embedding`` column of a job's results as one float32 matrix."""
    column = ds.with_format("arrow")["embedding"].combine_chunks()
    return column.flatten().to_numpy().reshape(len(column), -1).astype(np.float32)


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The smallest row-wise cosine similarity between two matrices of the same shape."""
    a, b = a / np.linalg.norm(a, axis=1, keepdims=True), b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())


def _squash(text: str) -> str:
    # decoding a prefix may space what the whole text's clean-up joins ("it ' s" / "it's"): compare without spaces
    return "".join(text.split())


def greedy_gaps(folder: Path, prompts: list[str], texts: list[str], tokens: list[int], tie: float) -> list[float]:
    """Per row, the largest logit gap (float32 on the CPU) between the model's greedy token and the token the text took
    instead; 0 where the text is float32's greedy text, ``inf`` where no tokens within ``tie`` of greedy explain it.

    ``texts`` are generated continuations (special tokens skipped) of ``tokens`` tokens each, as a text-generation
    job returns them in ``generated_text`` and ``completion_tokens``.
    """
    import torch
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])

    def explain(context: list[int], new: list[int], left: int, target: str, budget: list[int]) -> float:
        # the smallest worst gap over the ways to go on from ``new``; a special token decodes to nothing, so more
        # than one candidate can fit the text: try them in order of gap, stop when none can do better
        if left == 0:
            return 0.0 if _squash(tok.decode(new, skip_special_tokens=True)) == target else math.inf
        budget[0] -= 1
        if budget[0] < 0:
            return math.inf
        with torch.inference_mode():
            logits = model(torch.tensor([context + new])).logits[0, -1].float()
        top, best = float(logits.max()), math.inf
        for t in sorted(torch.nonzero(logits >= top - tie).flatten().tolist(), key=lambda t: -float(logits[t])):
            gap = top - float(logits[t])
            if gap >= best:
                break
            # (a byte-level token may end inside a character, which decodes as U+FFFD until the rest comes)
            spelt = _squash(tok.decode(new + [t], skip_special_tokens=True)).rstrip("\ufffd")
            if (t in eos and left > 1) or not target.startswith(spelt):
                continue  # an end token must be the last; any other must spell the text on
            best = min(best, max(gap, explain(context, new + [t], left - 1, target, budget)))
        return best

    return [explain(tok(prompt)["input_ids"], [], count, _squash(text), [1000])
            for prompt, text, count in zip(prompts, texts, tokens, strict=True)]
