"""How many tokens a row may have, and tokenizing under that limit one row at a time.

A row's limit is the smallest of the worker's ``HFQ_MAX_LENGTH`` and the model's own limits: the
tokenizer's ``model_max_length`` (when it is a real value, not transformers' huge "no limit" sentinel),
the positions the model config has room for, and a sentence-transformers model's ``max_seq_length``.
A longer row is cut to the limit and counted (the pipeline's ``truncation=True``), or, when the job set
``truncate=False``, refused alone with its length, never failing the rows beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# transformers gives tokenizers without a known limit model_max_length = int(1e30); no real model takes 10M.
_NO_LIMIT = 10_000_000

# Models whose position ids start after the padding index (RoBERTa's scheme): of max_position_embeddings
# (514 for a 512-token RoBERTa), pad_token_id + 1 are never used by a row.
_PADDING_OFFSET_TYPES = frozenset({"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "longformer",
                                   "data2vec-text", "mpnet", "luke", "roberta-prelayernorm", "ibert", "xmod",
                                   "markuplm", "layoutlmv3", "esm"})


def position_limit(config: Any) -> int | None:
    """The tokens a row may have by the model config's learned positions, or None (relative positions: T5).

    ``config`` is a transformers config, or the dict of a ``config.json`` (read at submit, without torch).
    """
    if isinstance(config, dict):
        text = config.get("text_config") or config
        positions = text.get("max_position_embeddings", text.get("n_positions"))
        model_type, pad = text.get("model_type"), text.get("pad_token_id")
    else:
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        positions = getattr(text, "max_position_embeddings", None)
        model_type, pad = getattr(text, "model_type", None), getattr(text, "pad_token_id", None)
    if not isinstance(positions, int) or positions <= 0:
        return None
    if model_type in _PADDING_OFFSET_TYPES:
        positions -= int(pad or 0) + 1
    return positions


def model_limit(config: Any, tokenizer: Any, *more: int | None) -> int | None:
    """The smallest of the tokenizer's real ``model_max_length``, the config's positions and ``more``; None if
    the model states no limit at all."""
    stated = getattr(tokenizer, "model_max_length", None)
    candidates = [stated if isinstance(stated, int) and 0 < stated < _NO_LIMIT else None,
                  position_limit(config), *more]
    known = [c for c in candidates if c is not None]
    return min(known) if known else None


class RowTooLong(ValueError):
    """A row longer than its model takes, in a job that asked not to truncate (``truncate=False``)."""


@dataclass
class TokenLimit:
    """The tokens one row may have, whether a longer row is cut (else refused), and which rows were cut.

    ``truncated`` holds the indexes (within the rows of one ``prepare`` call) that :func:`tokenize` cut.
    """

    tokens: int
    truncate: bool = True
    truncated: set[int] = field(default_factory=set)

    def too_long(self, length: int) -> RowTooLong:
        """The error of a row of ``length`` tokens when the job does not truncate."""
        return RowTooLong(f"{length} tokens; the model takes {self.tokens} (the job set truncate=False: "
                          "submit with truncation on, or shorten the row)")


def tokenize(tokenizer: Any, texts: list[str], limit: TokenLimit, pairs: list[str] | None = None,
             **kwargs: Any) -> Any:
    """``tokenizer(texts[, pairs], truncation=True, max_length=limit.tokens, **kwargs)``, without padding, noting
    each row that had to be cut in ``limit.truncated``; :class:`RowTooLong` for the first such row when the
    limit does not truncate.

    Rows are tokenized one token past the limit, so a row that needs cutting shows itself by its length;
    only those few are tokenized again at the limit.
    """
    args = (texts,) if pairs is None else (texts, pairs)
    enc = tokenizer(*args, truncation=True, max_length=limit.tokens + 1, **kwargs)
    long = [i for i, ids in enumerate(enc["input_ids"]) if len(ids) > limit.tokens]
    if not long:
        return enc
    if not limit.truncate:
        one = (texts[long[0]],) if pairs is None else (texts[long[0]], pairs[long[0]])
        raise limit.too_long(len(tokenizer(*one, **kwargs)["input_ids"]))
    cut_args = ([texts[i] for i in long],) if pairs is None else ([texts[i] for i in long], [pairs[i] for i in long])
    cut = tokenizer(*cut_args, truncation=True, max_length=limit.tokens, **kwargs)
    for j, i in enumerate(long):
        for key in enc.keys():
            enc[key][i] = cut[key][j]
    limit.truncated.update(long)
    return enc
