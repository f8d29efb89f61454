"""The tiny sentence-transformers models of tests/st_models.py: each folder loads offline with
SentenceTransformer / CrossEncoder (or transformers' pipeline) and gives finite outputs of the right shape."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import numpy as np
import pytest
from sentence_transformers import CrossEncoder, SentenceTransformer
from transformers import AutoTokenizer, pipeline

from tests.st_models import (
    DECODER_PROMPTS,
    POOLING_MODES,
    SHORT_LABELS,
    build_cross_encoder,
    build_short_classifier,
    build_st_decoder,
    build_st_encoder,
    long_sentences,
)
from tests.tiny_models import build_tokenizer, sentences


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _modules(folder: Path) -> list[tuple[str, str]]:
    return [(m["path"], m["type"].rsplit(".", 1)[-1]) for m in json.loads((folder / "modules.json").read_text())]


def _assert_embeddings(emb: np.ndarray, rows: int, dim: int) -> None:
    assert emb.shape == (rows, dim)
    assert np.isfinite(emb).all()
    assert not np.allclose(emb[0], emb[1])  # different texts, different embeddings


@pytest.mark.timeout(60)
@pytest.mark.parametrize("pooling", POOLING_MODES)
def test_st_encoder_loads_and_encodes_with_every_pooling_mode(tmp_path: Path, pooling: str) -> None:
    # Given: a SentenceTransformer folder with the given pooling mode
    folder = build_st_encoder(tmp_path / "st", pooling)

    # When: it is loaded offline and encodes three sentences
    model = SentenceTransformer(str(folder), device="cpu")
    emb = model.encode(sentences(3))

    # Then: Transformer + Pooling, one finite 32-wide row per sentence, 512 tokens at most
    assert folder == tmp_path / "st"
    assert _modules(folder) == [("", "Transformer"), ("1_Pooling", "Pooling")]
    assert _json(folder / "1_Pooling" / "config.json")["pooling_mode"] == pooling
    assert model.max_seq_length == 512
    _assert_embeddings(emb, 3, 32)


@pytest.mark.timeout(60)
def test_st_encoder_with_dense_and_normalize_gives_unit_16_wide_rows(tmp_path: Path) -> None:
    # Given: an encoder with a Dense 32 -> 16 layer and Normalize
    folder = build_st_encoder(tmp_path / "st", "mean", dense=True, normalize=True)

    # When: it encodes two sentences
    emb = SentenceTransformer(str(folder), device="cpu").encode(sentences(2))

    # Then: four modules, rows of 16 with unit norm
    assert _modules(folder) == [("", "Transformer"), ("1_Pooling", "Pooling"), ("2_Dense", "Dense"),
                                ("3_Normalize", "Normalize")]
    _assert_embeddings(emb, 2, 16)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)


@pytest.mark.timeout(60)
def test_st_encoder_is_the_same_on_every_build(tmp_path: Path) -> None:
    # Given: the same encoder (with Dense) built twice
    a = build_st_encoder(tmp_path / "a", "cls", dense=True)
    b = build_st_encoder(tmp_path / "b", "cls", dense=True)

    # When: both encode the same sentences
    texts = sentences(2)
    ea = SentenceTransformer(str(a), device="cpu").encode(texts)
    eb = SentenceTransformer(str(b), device="cpu").encode(texts)

    # Then: the embeddings are identical (seeded BERT and Dense weights)
    np.testing.assert_array_equal(ea, eb)


@pytest.mark.timeout(60)
def test_st_encoder_default_prompt_excluded_from_pooling(tmp_path: Path) -> None:
    # Given: an encoder with a default "query" prompt that the pooling leaves out
    prompts = {"query": "query: "}
    folder = build_st_encoder(tmp_path / "st", "mean", prompts=prompts, default_prompt_name="query",
                              include_prompt=False)

    # When: it is loaded and encodes with and without the default prompt
    model = SentenceTransformer(str(folder), device="cpu")
    texts = sentences(2)
    with_default = model.encode(texts)
    explicit = model.encode(texts, prompt="query: ")
    no_prompt = model.encode(texts, prompt="")

    # Then: the prompt is stored and applied by default, and it changes the embedding
    assert model.prompts["query"] == "query: " and model.default_prompt_name == "query"
    assert _json(folder / "config_sentence_transformers.json")["default_prompt_name"] == "query"
    assert _json(folder / "1_Pooling" / "config.json")["include_prompt"] is False
    _assert_embeddings(with_default, 2, 32)
    np.testing.assert_allclose(with_default, explicit, rtol=1e-5, atol=1e-6)
    assert not np.allclose(with_default, no_prompt)


@pytest.mark.timeout(60)
def test_st_encoder_max_seq_length_and_lower_case_are_saved_in_the_tokenizer(tmp_path: Path) -> None:
    # Given: an encoder truncating at 64 tokens and lower-casing its input
    folder = build_st_encoder(tmp_path / "st", "mean", max_seq_length=64, do_lower_case=True)
    long_text = long_sentences(1, 100)[0]

    # When: it is loaded and encodes a long text and a text in two cases
    model = SentenceTransformer(str(folder), device="cpu")
    emb = model.encode([long_text, "Hello World", "hello world"])

    # Then: 64 is the tokenizer's model_max_length; the cases embed alike; the long text is cut to 64
    assert model.max_seq_length == 64
    assert _json(folder / "tokenizer_config.json")["model_max_length"] == 64
    assert len(model.tokenizer(long_text, truncation=True)["input_ids"]) == 64
    assert np.isfinite(emb).all() and emb.shape == (3, 32)
    np.testing.assert_allclose(emb[1], emb[2], rtol=1e-5, atol=1e-6)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_st_decoder_loads_and_encodes_queries_with_the_instruct_prompt(tmp_path: Path, padding_side: str) -> None:
    # Given: a Qwen2 decoder embedder (last-token pooling, Normalize, an instruct prompt)
    folder = build_st_decoder(tmp_path / "dec", padding_side=padding_side)

    # When: it is loaded offline and encodes documents and queries of different lengths
    model = SentenceTransformer(str(folder), device="cpu")
    texts = [sentences(1)[0], "Short one."]
    docs = model.encode(texts)
    queries = model.encode_query(texts)
    alone = model.encode(texts[1:])

    # Then: unit rows of 32; the prompt is applied to queries; padding does not move a row; every text ends
    # in EOS, tokenized the same by AutoTokenizer
    assert _modules(folder) == [("", "Transformer"), ("1_Pooling", "Pooling"), ("2_Normalize", "Normalize")]
    assert _json(folder / "1_Pooling" / "config.json")["pooling_mode"] == "lasttoken"
    assert model.prompts["query"] == DECODER_PROMPTS["query"]
    assert model.tokenizer.padding_side == padding_side
    _assert_embeddings(docs, 2, 32)
    _assert_embeddings(queries, 2, 32)
    np.testing.assert_allclose(np.linalg.norm(docs, axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(docs, queries)
    np.testing.assert_allclose(docs[1], alone[0], rtol=1e-4, atol=1e-5)
    auto = AutoTokenizer.from_pretrained(folder)
    ids = auto(texts[0])["input_ids"]
    assert ids[-1] == auto.eos_token_id and ids == model.tokenizer(texts[0])["input_ids"]


@pytest.mark.timeout(60)
def test_cross_encoder_predicts_one_score_per_pair(tmp_path: Path) -> None:
    # Given: a CrossEncoder folder with one label
    folder = build_cross_encoder(tmp_path / "ce")

    # When: it is loaded offline and scores three (query, passage) pairs
    model = CrossEncoder(str(folder), device="cpu")
    q, *passages = sentences(4)
    scores = model.predict([(q, p) for p in passages])

    # Then: one finite score in (0, 1) per pair, not all equal
    assert _modules(folder) == [("", "Transformer")]
    assert _json(folder / "sentence_bert_config.json")["transformer_task"] == "sequence-classification"
    assert scores.shape == (3,)
    assert np.isfinite(scores).all() and ((scores > 0) & (scores < 1)).all()
    assert len(set(scores.tolist())) > 1


@pytest.mark.timeout(60)
def test_short_classifier_needs_truncation_to_its_positions(tmp_path: Path) -> None:
    # Given: a classifier with 256 positions whose tokenizer still says 512, and a 600-token text
    folder = build_short_classifier(tmp_path / "short", positions=256)
    text = long_sentences(1, 600)[0]
    clf = pipeline("text-classification", model=str(folder), device="cpu")

    # When / Then: truncating to the tokenizer's 512 overruns the 256 positions
    assert clf.tokenizer.model_max_length == 512 and clf.model.config.max_position_embeddings == 256
    with pytest.raises((RuntimeError, IndexError)):
        clf(text, truncation=True)

    # When / Then: truncating to the positions gives one of the three labels with a finite score
    [out] = clf(text, truncation=True, max_length=256)
    assert out["label"] in SHORT_LABELS and np.isfinite(out["score"])


@pytest.mark.timeout(60)
def test_long_sentences_are_long_enough_and_deterministic(tmp_path: Path) -> None:
    # Given: the tiny tokenizer
    tokenizer = AutoTokenizer.from_pretrained(build_tokenizer(tmp_path / "tok"))

    # When: three texts of at least 300 tokens are drawn twice
    texts = long_sentences(3, 300)

    # Then: each is long enough, they differ, and the draw is repeatable
    assert len(texts) == 3 and len(set(texts)) == 3
    assert all(len(tokenizer(t, add_special_tokens=False)["input_ids"]) >= 300 for t in texts)
    assert texts == long_sentences(3, 300)
