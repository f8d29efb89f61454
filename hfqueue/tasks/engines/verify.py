"""Checking an engine against torch before it serves: probe batches through both, the outputs compared.

The measure is the smallest cosine between matching output vectors: per token (non-padding positions only)
for ``last_hidden_state``, per row for ``logits``. Cosine, not max abs difference, because it is scale-free:
hidden-state magnitudes differ by orders of magnitude between models (and between channels of one model), so
one absolute threshold cannot fit all, while what consumers compute from these vectors (cosine search on
pooled embeddings, argmax and softmax of logits) depends on their direction. Per token, not per pooled row,
because the task may pool by CLS, take tokens whole (pooling none) or pool a way verify cannot know. The max
abs difference is still reported in the error, for a reader who wants it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from hfqueue.errors import ModelLoadError

# The smallest cosine to torch fp32 each engine may show on the probes. fp32 ORT differs from torch only by
# kernel order (1 - 1e-6 on all-MiniLM-L6-v2); int8 blockwise weights show 0.997 per token there.
TOLERANCES: dict[str, float] = {"onnx": 0.9999, "onnx-int8": 0.99}
_PROBE_SIZES = ((1, 0), (2, 1), (5, 2), (8, 3))  # (rows, offset into the sentence pool): sizes 1..8, mixed lengths


def _pool_sentences(n: int) -> list[str]:
    """``n`` English sentences of varied length from ``pydoc_data.topics`` (stdlib: offline, the same each run)."""
    import re
    from pydoc_data.topics import topics

    found: list[str] = []
    for key in sorted(topics):
        for sentence in re.split(r"(?<=[.!?])\s+", " ".join(topics[key].split())):
            if len(sentence) > 20:
                found.append(sentence)
    found = sorted(set(found), key=lambda s: (len(s), s))  # ties by text: a set's order changes per process
    # Evenly spaced through the lengths, interleaved short/long so that every batch mixes lengths (padding).
    spread = [found[i * (len(found) - 1) // max(1, n - 1)] for i in range(n)]
    return [spread[i // 2] if i % 2 == 0 else spread[n - 1 - i // 2] for i in range(n)]


def probe_batches(tokenizer: Any, *, max_length: int = 256, pairs: bool | None = None) -> list[dict[str, Any]]:
    """Tokenized probe batches as a task's collate gives them (padded, int64): 1, 2, 5 and 8 rows of mixed
    lengths, one row cut at ``max_length`` (a long run of sentences), one batch whose rows all share a length
    (no padding), and with ``pairs`` (default: when the tokenizer makes token_type_ids) a batch of text pairs."""
    texts = _pool_sentences(40)
    batches: list[list[Any]] = [texts[off * 8: off * 8 + rows] for rows, off in _PROBE_SIZES]
    batches[-1][-1] = " ".join(texts)  # longer than max_length: exercises truncation and the longest sequence
    pairs = "token_type_ids" in getattr(tokenizer, "model_input_names", ()) if pairs is None else pairs
    out = [dict(tokenizer(b, padding=True, truncation=True, max_length=max_length, return_tensors="pt"))
           for b in batches]
    out.append(dict(tokenizer([texts[0]] * 3, padding=True, return_tensors="pt")))  # equal lengths: no padding
    if pairs:
        out.append(dict(tokenizer(texts[32:35], texts[35:38], padding=True, truncation=True, max_length=max_length,
                                  return_tensors="pt")))
    return out


def _vectors(out: Any, mask: Any) -> Any:
    """The output vectors to compare: one per non-padding token (3-D output), one per row (2-D), or the batch's
    scores as one vector for a single-logit head (a reranker), where one row's cosine is only its sign."""
    if out.dim() == 3:
        return out[mask.bool()]
    return out.reshape(1, -1) if out.shape[-1] == 1 else out


def verify(torch_fn: Callable[..., Any], engine_fn: Callable[..., Any], probe_batches: Sequence[dict[str, Any]],
           tolerance: float, *, engine: str = "engine", model: str = "model") -> float:
    """Run ``probe_batches`` through both callables (each ``fn(**batch) -> tensor``); return the smallest cosine
    between their output vectors. Raise ModelLoadError naming ``engine``, ``model``, the measured cosine, the max
    abs difference and the batch's shape when the cosine is below ``tolerance``, the shapes differ or the engine
    gives NaN or inf, or fails on a batch."""
    import torch

    worst, worst_shape, worst_abs = 1.0, None, 0.0
    for batch in probe_batches:
        shape = tuple(batch["input_ids"].shape)
        with torch.inference_mode():
            want = torch_fn(**batch).float().cpu()
            try:
                got = engine_fn(**batch).float().cpu()
            except Exception as exc:  # e.g. an export with a fixed sequence length, run on another length
                raise ModelLoadError(f"engine {engine!r} for model {model!r} fails on a probe batch of shape {shape}: "
                                     f"{exc}", value=engine) from exc
        if want.shape != got.shape:
            raise ModelLoadError(f"engine {engine!r} for model {model!r} gives shape {tuple(got.shape)} where torch "
                                 f"gives {tuple(want.shape)} on a batch of shape {shape}", value=engine)
        if not torch.isfinite(got).all():
            raise ModelLoadError(f"engine {engine!r} for model {model!r} gives NaN or inf on a batch of shape {shape}",
                                 value=engine)
        mask = batch["attention_mask"].cpu()
        a, b = _vectors(want, mask), _vectors(got, mask)
        cosine = float(torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-12).min())
        if cosine < worst:
            worst, worst_shape, worst_abs = cosine, shape, float((a - b).abs().max())
    if worst < tolerance:
        raise ModelLoadError(f"engine {engine!r} for model {model!r} differs from torch: min cosine {worst:.6f} < "
                             f"{tolerance} (max abs difference {worst_abs:.4g}) on a probe batch of shape "
                             f"{worst_shape}", value=engine)
    return worst
