"""Tiny real models in sentence-transformers format, for tests that compare hfqueue's embeddings and scores
with ``SentenceTransformer(path).encode`` / ``CrossEncoder(path).predict``.

Same recipe as ``tiny_models``: the BPE tokenizer trained on ``pydoc_data.topics``, small configs of real
architectures, random weights under a fixed seed. The sentence-transformers folders are written by
sentence-transformers itself (``SentenceTransformer(modules=[...]).save`` / ``CrossEncoder(...).save``), so
their layout is exactly what the installed library writes. With sentence-transformers 6.x that layout is the
new one, not the legacy one most Hub models still ship:

* ``max_seq_length`` is not in ``sentence_bert_config.json``: it is the tokenizer's ``model_max_length``
  (``tokenizer_config.json``);
* ``do_lower_case`` is not stored either: a ``Lowercase`` normalizer is written into ``tokenizer.json``;
* ``1_Pooling/config.json`` holds ``{"embedding_dimension", "pooling_mode": "<mode>", "include_prompt"}``
  instead of ``word_embedding_dimension`` and the ``pooling_mode_*_tokens`` booleans;
* prompts and ``default_prompt_name`` are in ``config_sentence_transformers.json`` (a ``"document": ""``
  prompt is always added).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

from sentence_transformers import CrossEncoder, SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer
from tokenizers import processors
from torch import nn
from transformers import BertForSequenceClassification, BertModel, PreTrainedTokenizerFast, Qwen2Config, Qwen2Model

from tests.tiny_models import MODEL_MAX_LENGTH, _config, _make_tokenizer, _save, seeded, sentences

__all__ = ["DECODER_PROMPTS", "POOLING_MODES", "SHORT_LABELS", "build_cross_encoder", "build_short_classifier",
           "build_st_decoder", "build_st_encoder", "long_sentences"]

PoolingMode = Literal["cls", "mean", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"]
POOLING_MODES: tuple[PoolingMode, ...] = ("cls", "mean", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
DENSE_FEATURES = 16
HIDDEN_SIZE = 32
DECODER_PROMPTS = {"query": "Instruct: find it\nQuery: "}
SHORT_LABELS = ("NEGATIVE", "NEUTRAL", "POSITIVE")


def _st_save(model: SentenceTransformer | CrossEncoder, path: Path) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save(str(path))
    return path


def build_st_encoder(path: Path, pooling: PoolingMode = "mean", *, max_seq_length: int | None = None,
                     dense: bool = False, normalize: bool = False, prompts: dict[str, str] | None = None,
                     default_prompt_name: str | None = None, include_prompt: bool = True,
                     do_lower_case: bool = False) -> Path:
    """A SentenceTransformer over the tiny two-layer BERT (hidden size 32), saved into ``path``.

    Modules: ``Transformer`` -> ``Pooling(pooling_mode=pooling, include_prompt=include_prompt)`` -> an optional
    ``Dense(32 -> 16, tanh)`` (``dense``) -> an optional ``Normalize`` (``normalize``). The BERT has 512
    positions; ``max_seq_length`` (e.g. 64) makes sentence-transformers truncate shorter, and is saved as the
    tokenizer's ``model_max_length``. ``do_lower_case`` is saved as a ``Lowercase`` normalizer in
    ``tokenizer.json``. ``prompts`` / ``default_prompt_name`` go to ``config_sentence_transformers.json``.
    The same weights (BERT and Dense) on every call with the same arguments.
    """
    if pooling not in POOLING_MODES:
        raise ValueError(f"pooling must be one of {POOLING_MODES}, got {pooling!r}")
    tokenizer = _make_tokenizer()
    with tempfile.TemporaryDirectory(prefix="st-bert-") as base:
        _save(seeded(lambda: BertModel(_config(tokenizer))), tokenizer, Path(base))
        transformer = Transformer(base, max_seq_length=max_seq_length, do_lower_case=do_lower_case)
        pool = Pooling(transformer.get_embedding_dimension(), pooling_mode=pooling, include_prompt=include_prompt)
        modules: list[nn.Module] = [transformer, pool]
        if dense:
            modules.append(seeded(lambda: Dense(pool.get_embedding_dimension(), DENSE_FEATURES,
                                                activation_function=nn.Tanh())))
        if normalize:
            modules.append(Normalize())
        model = SentenceTransformer(modules=modules, prompts=prompts, default_prompt_name=default_prompt_name,
                                    device="cpu")
        return _st_save(model, path)


def _decoder_tokenizer(padding_side: Literal["left", "right"]) -> PreTrainedTokenizerFast:
    """The tiny BPE tokenizer made decoder-like: no BOS, ``[SEP]`` as EOS appended to every text (as
    gte-Qwen2 appends ``<|endoftext|>``), ``[PAD]`` as pad token, the given padding side saved."""
    tokenizer = _make_tokenizer()
    tokenizer.eos_token = "[SEP]"
    eos_id = tokenizer.eos_token_id
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="$A [SEP]", pair="$A [SEP] $B:1 [SEP]:1", special_tokens=[("[SEP]", eos_id)])
    # transformers 5 saves padding_side only when it is an init kwarg; setting the attribute alone is lost.
    tokenizer.init_kwargs["padding_side"] = tokenizer.padding_side = padding_side
    return tokenizer


def build_st_decoder(path: Path, *, padding_side: Literal["left", "right"] = "left") -> Path:
    """A decoder embedder shaped like gte-Qwen2 / e5-mistral, saved into ``path``.

    A two-layer ``Qwen2Model`` (hidden size 32, rotary positions, 512 max) -> ``Pooling("lasttoken")`` ->
    ``Normalize``, with the prompt ``DECODER_PROMPTS`` (``{"query": "Instruct: find it\\nQuery: "}``, not the
    default). The tokenizer appends ``[SEP]`` (its EOS) to every text, pads with ``[PAD]`` on
    ``padding_side`` (left by default). Loading the folder turns the tokenizer into a ``Qwen2Tokenizer``
    (transformers picks it from ``model_type``), which is what sentence-transformers then saves: the folder
    is self-consistent, and AutoTokenizer and sentence-transformers tokenize it alike.
    """
    tokenizer = _decoder_tokenizer(padding_side)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=HIDDEN_SIZE, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=MODEL_MAX_LENGTH, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=None, use_cache=False)
    with tempfile.TemporaryDirectory(prefix="st-qwen2-") as base:
        _save(seeded(lambda: Qwen2Model(config)), tokenizer, Path(base))
        transformer = Transformer(base)
        modules = [transformer, Pooling(transformer.get_embedding_dimension(), pooling_mode="lasttoken"), Normalize()]
        model = SentenceTransformer(modules=modules, prompts=dict(DECODER_PROMPTS), device="cpu")
        return _st_save(model, path)


def build_cross_encoder(path: Path, num_labels: int = 1, max_position_embeddings: int = MODEL_MAX_LENGTH) -> Path:
    """A CrossEncoder over a two-layer ``BertForSequenceClassification`` with ``num_labels`` outputs (wide
    weights, ``initializer_range=1.0``), saved into ``path`` by ``CrossEncoder.save``.

    ``CrossEncoder(path).predict([(query, passage), ...])`` gives one score per pair (sigmoid of the logit
    for one label: ``activation_fn`` is saved in ``config_sentence_transformers.json``). The tokenizer
    encodes pairs as ``[CLS] q [SEP] p [SEP]``; ``max_position_embeddings`` caps the tokenizer's
    ``model_max_length`` when sentence-transformers loads it.
    """
    tokenizer = _make_tokenizer()
    config = _config(tokenizer, num_labels=num_labels, initializer_range=1.0)
    config.max_position_embeddings = max_position_embeddings
    with tempfile.TemporaryDirectory(prefix="st-cross-") as base:
        _save(seeded(lambda: BertForSequenceClassification(config)), tokenizer, Path(base))
        return _st_save(CrossEncoder(base, device="cpu"), path)


def build_short_classifier(path: Path, positions: int = 256) -> Path:
    """A plain-transformers three-label ``BertForSequenceClassification`` (NEGATIVE / NEUTRAL / POSITIVE,
    wide weights) whose model has only ``positions`` position embeddings, saved into ``path``.

    The trap: the tokenizer's ``model_max_length`` is left at 512, LARGER than ``positions``. So
    ``pipeline("text-classification", truncation=True)`` truncates a long text to 512 tokens and the model
    fails on it (a ``RuntimeError`` on the position ids in transformers 5); only truncating to
    ``min(model_max_length, config.max_position_embeddings)`` works.
    """
    if not 0 < positions < MODEL_MAX_LENGTH:
        raise ValueError(f"positions must be in 1..{MODEL_MAX_LENGTH - 1}, got {positions}")
    tokenizer = _make_tokenizer()
    config = _config(tokenizer, num_labels=len(SHORT_LABELS), initializer_range=1.0,
                     id2label=dict(enumerate(SHORT_LABELS)), label2id={n: i for i, n in enumerate(SHORT_LABELS)})
    config.max_position_embeddings = positions
    return _save(seeded(lambda: BertForSequenceClassification(config)), tokenizer, path)


def long_sentences(n: int, min_tokens: int, seed: int = 0) -> list[str]:
    """``n`` real texts, each at least ``min_tokens`` tokens long with the tiny tokenizer (special tokens not
    counted), made by joining the sentences of ``tiny_models.sentences`` in order; the same list for the same
    arguments. No sentence is used twice while the pool lasts."""
    if n < 0 or min_tokens < 1:
        raise ValueError(f"need n >= 0 and min_tokens >= 1, got n={n}, min_tokens={min_tokens}")
    tokenizer = _make_tokenizer()

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    # Every sentence is longer than 20 characters, hence at least a few tokens; grow the pool if not enough.
    pool = sentences(n * (min_tokens // 4 + 2), seed=seed)
    used = 0
    out: list[str] = []
    for _ in range(n):
        parts: list[str] = []
        estimate = 0
        while estimate < min_tokens or count(" ".join(parts)) < min_tokens:
            if used == len(pool):
                pool = sentences(2 * len(pool), seed=seed)  # same prefix: sentences() is prefix-stable
            parts.append(pool[used])
            estimate += count(pool[used])
            used += 1
        out.append(" ".join(parts))
    return out
