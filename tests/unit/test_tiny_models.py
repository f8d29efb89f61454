"""The tiny offline models of tests/tiny_models.py: real tokenizer and BERT folders, loaded
through the Auto classes with the Hub switched off."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertModel,
)

from tests.tiny_models import build_classifier, build_encoder, build_tokenizer, sentences


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def _state_dicts_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.timeout(60)
def test_tokenizer_folder_loads_offline_and_wraps_with_cls_sep(tmp_path: Path) -> None:
    # Given: a tokenizer saved alone into a folder
    folder = build_tokenizer(tmp_path / "tok")
    assert folder == tmp_path / "tok"

    # When: it is loaded with AutoTokenizer and encodes one sentence
    tokenizer = AutoTokenizer.from_pretrained(folder)
    text = sentences(1)[0]
    ids = tokenizer(text)["input_ids"]

    # Then: the special tokens are in place and the sequence is wrapped as [CLS] ... [SEP]
    assert tokenizer.pad_token == "[PAD]"
    assert tokenizer.unk_token == "[UNK]"
    assert tokenizer.cls_token == "[CLS]"
    assert tokenizer.sep_token == "[SEP]"
    assert tokenizer.mask_token == "[MASK]"
    assert tokenizer.model_max_length == 512
    assert 500 <= len(tokenizer) <= 1000
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    assert "[UNK]" not in tokens  # byte-level: nothing is unknown
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


@pytest.mark.timeout(60)
def test_tokenizer_pads_a_batch_to_the_longest(tmp_path: Path) -> None:
    # Given: a loaded tokenizer and sentences of different lengths
    tokenizer = AutoTokenizer.from_pretrained(build_tokenizer(tmp_path / "tok"))
    batch = ["A short one here.", sentences(1, seed=5)[0] + " " + sentences(1, seed=6)[0]]

    # When: the batch is encoded with padding into tensors
    enc = tokenizer(batch, padding=True, return_tensors="pt")

    # Then: both rows have the same length; the short row ends in [PAD] masked out
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert ids.shape == mask.shape and ids.shape[0] == 2
    lengths = mask.sum(dim=1).tolist()
    assert lengths[0] < lengths[1] == ids.shape[1]
    short = ids[0].tolist()
    assert short[lengths[0] - 1] == tokenizer.sep_token_id
    assert set(short[lengths[0] :]) == {tokenizer.pad_token_id}
    assert mask[0, lengths[0] :].sum().item() == 0


@pytest.mark.timeout(60)
def test_encoder_folder_loads_and_gives_hidden_size_32(tmp_path: Path) -> None:
    # Given: an encoder folder (model + tokenizer)
    folder = build_encoder(tmp_path / "enc")

    # When: model and tokenizer are loaded with the Auto classes and run on a padded batch
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder)
    model.eval()
    texts = sentences(3, seed=1)
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**enc)

    # Then: it is a small BERT whose hidden states are (batch, tokens, 32)
    assert isinstance(model, BertModel)
    assert model.config.hidden_size == 32
    assert model.config.num_hidden_layers == 2
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert out.last_hidden_state.shape == (3, enc["input_ids"].shape[1], 32)
    assert torch.isfinite(out.last_hidden_state).all()


@pytest.mark.timeout(60)
def test_classifier_gives_two_logits_and_labels_round_trip(tmp_path: Path) -> None:
    # Given: a classifier folder with the default labels
    folder = build_classifier(tmp_path / "cls")

    # When: it is loaded with AutoModelForSequenceClassification and run on two sentences
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    model.eval()
    enc = tokenizer(sentences(2, seed=2), padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits

    # Then: two logits per row, and id2label / label2id survive the save and load
    assert logits.shape == (2, 2)
    assert model.config.id2label == {0: "NEGATIVE", 1: "POSITIVE"}
    assert model.config.label2id == {"NEGATIVE": 0, "POSITIVE": 1}
    assert AutoConfig.from_pretrained(folder).id2label == {0: "NEGATIVE", 1: "POSITIVE"}


@pytest.mark.timeout(60)
def test_classifier_takes_custom_labels(tmp_path: Path) -> None:
    # Given: three custom labels
    labels = ("neg", "neu", "pos")

    # When: a classifier is built with them and loaded
    model = AutoModelForSequenceClassification.from_pretrained(build_classifier(tmp_path / "c3", labels))

    # Then: it has three outputs named in order
    assert model.config.num_labels == 3
    assert [model.config.id2label[i] for i in range(3)] == list(labels)
    assert model.config.label2id == {"neg": 0, "neu": 1, "pos": 2}


@pytest.mark.timeout(60)
def test_two_builds_give_identical_weights_and_tokenizers(tmp_path: Path) -> None:
    # Given: the caller's RNG state before building
    rng_before = torch.random.get_rng_state()

    # When: the encoder and the classifier are each built twice into different folders
    enc_a, enc_b = build_encoder(tmp_path / "a"), build_encoder(tmp_path / "b")
    cls_a, cls_b = build_classifier(tmp_path / "ca"), build_classifier(tmp_path / "cb")

    # Then: the weights and the tokenizer files are identical, and the global RNG is untouched
    assert _state_dicts_equal(AutoModel.from_pretrained(enc_a), AutoModel.from_pretrained(enc_b))
    assert _state_dicts_equal(
        AutoModelForSequenceClassification.from_pretrained(cls_a),
        AutoModelForSequenceClassification.from_pretrained(cls_b),
    )
    assert (enc_a / "tokenizer.json").read_bytes() == (enc_b / "tokenizer.json").read_bytes()
    assert (enc_a / "tokenizer.json").read_bytes() == (cls_a / "tokenizer.json").read_bytes()
    assert torch.equal(torch.random.get_rng_state(), rng_before)


@pytest.mark.timeout(60)
def test_sentences_are_deterministic_real_and_long_enough() -> None:
    # Given / When: the same request twice, and one with another seed
    first = sentences(50, seed=7)
    again = sentences(50, seed=7)
    other = sentences(50, seed=8)

    # Then: identical for the same seed, different for another, n long, all > 20 chars
    assert first == again
    assert first != other
    assert len(first) == 50
    assert all(isinstance(s, str) and len(s) > 20 for s in first)
    assert all(s == " ".join(s.split()) for s in first)  # whitespace collapsed
    assert len({len(s) for s in first}) > 10  # varied lengths
    assert len(set(first)) == 50  # no repeats while the pool lasts
    assert sentences(0) == []


@pytest.mark.timeout(60)
def test_sentences_beyond_the_pool_still_returns_n() -> None:
    # Given / When: more sentences than the pool holds
    many = sentences(5000)

    # Then: exactly n are returned, deterministically
    assert len(many) == 5000
    assert many == sentences(5000)
