"""Tiny, real Hugging Face models built on the spot, for tests that must not touch the Hub.

Everything here is built from material that ships with CPython (``pydoc_data.topics``, the
text behind ``help()``), so it works offline and gives the same bytes on every run of the same
interpreter:

* a byte-level BPE tokenizer (vocabulary of 800) trained in a few tens of milliseconds on
  ~40 kB of English prose, with ``[PAD] [UNK] [CLS] [SEP] [MASK]`` and a post-processor that
  wraps every input as ``[CLS] ... [SEP]``;
* a two-layer BERT encoder (hidden size 32) for ``feature-extraction``;
* the same encoder with a sequence-classification head for ``text-classification``.

Weights are random but drawn under a fixed seed, inside ``torch.random.fork_rng`` so that the
caller's global RNG state is left alone. Each ``build_*`` writes a folder with
``save_pretrained`` that ``AutoTokenizer.from_pretrained`` / ``AutoModel*.from_pretrained``
load offline.
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import BertConfig, BertForSequenceClassification, BertModel, PreTrainedTokenizerFast

__all__ = ["build_classifier", "build_encoder", "build_tokenizer", "seeded", "sentences"]

T = TypeVar("T")

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
VOCAB_SIZE = 800
MODEL_MAX_LENGTH = 512
TRAINING_CHARS = 40_000
WEIGHT_SEED = 1234

# A sentence is kept when it is longer than this and no longer than _MAX_SENTENCE_CHARS (so
# that no sentence comes near the 512-token limit of the tiny models).
_MIN_SENTENCE_CHARS = 20
_MAX_SENTENCE_CHARS = 400

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"(])")
_HEADING_UNDERLINE = re.compile(r"^([*=\-~^])\1{3,}$")
_BULLET = re.compile(r"^(?:[*\-+]|\d+\.)\s+")


# --------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _prose_sentences() -> tuple[str, ...]:
    """Every prose sentence of ``pydoc_data.topics``, in document order (topics sorted by key).

    Paragraphs are split at blank lines; indented paragraphs (grammar rules, code examples,
    tables) and section headings are skipped; what is left is whitespace-collapsed, stripped of
    a leading list bullet and split at sentence ends.
    """
    from pydoc_data.topics import topics

    found: list[str] = []
    for key in sorted(topics):
        for paragraph in re.split(r"\n\s*\n", topics[key]):
            lines = [line for line in paragraph.split("\n") if line.strip()]
            if not lines or lines[0][:1].isspace():
                continue
            if any(_HEADING_UNDERLINE.match(line.strip()) for line in lines):
                continue
            text = _BULLET.sub("", " ".join(" ".join(lines).split()))
            for sentence in _SENTENCE_END.split(text):
                sentence = sentence.strip()
                if _MIN_SENTENCE_CHARS < len(sentence) <= _MAX_SENTENCE_CHARS:
                    found.append(sentence)
    return tuple(found)


def sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` real English sentences of varied length, the same list for the same ``(n, seed)``.

    Drawn without repetition while the pool (a few thousand sentences) lasts; beyond that the
    pool is reshuffled and drawn again.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    pool = list(_prose_sentences())
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n:
        order = pool[:]
        rng.shuffle(order)
        out.extend(order[: n - len(out)])
    return out


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _trained_tokenizer_json() -> str:
    """Train the byte-level BPE tokenizer once per process; returned as JSON so that every
    caller gets its own fresh ``tokenizers.Tokenizer`` (the cached value is immutable)."""
    corpus = "\n".join(_prose_sentences())[:TRAINING_CHARS]
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus.split("\n"), trainer=trainer)
    cls_id = tokenizer.token_to_id("[CLS]")
    sep_id = tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return tokenizer.to_str()


def _make_tokenizer() -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_trained_tokenizer_json()),
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=MODEL_MAX_LENGTH,
    )


def build_tokenizer(path: Path) -> Path:
    """Save the tiny tokenizer alone into ``path`` (created if missing); return ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    _make_tokenizer().save_pretrained(path)
    return path


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


def _config(tokenizer: PreTrainedTokenizerFast, **extra: object) -> BertConfig:
    return BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=MODEL_MAX_LENGTH,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def seeded(build: Callable[[], T]) -> T:
    """Run a model constructor under the fixed weight seed, leaving the caller's RNG state alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(WEIGHT_SEED)
        return build()


def _save(model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast, path: Path) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_encoder(path: Path) -> Path:
    """A two-layer ``BertModel`` (hidden size 32) plus tokenizer in ``path``, for
    feature-extraction; the same weights on every call."""
    tokenizer = _make_tokenizer()
    config = _config(tokenizer)
    return _save(seeded(lambda: BertModel(config)), tokenizer, path)


def build_classifier(path: Path, labels: tuple[str, ...] = ("NEGATIVE", "POSITIVE")) -> Path:
    """A two-layer ``BertForSequenceClassification`` with ``len(labels)`` outputs and
    ``id2label``/``label2id`` set from ``labels``, plus tokenizer, in ``path``; for
    text-classification. The same weights on every call with the same ``labels``."""
    labels = tuple(labels)
    if not labels:
        raise ValueError("labels must not be empty")
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels must be distinct, got {labels!r}")
    tokenizer = _make_tokenizer()
    config = _config(
        tokenizer,
        num_labels=len(labels),
        # Wide initial weights so random logits differ enough that rows get different labels.
        initializer_range=1.0,
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    return _save(seeded(lambda: BertForSequenceClassification(config)), tokenizer, path)
