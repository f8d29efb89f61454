"""A row's token limit comes from the model, and tokenizing under it cuts (and notes) or refuses long rows."""

from __future__ import annotations

import pytest
from transformers import BertConfig, RobertaConfig, T5Config

from hfqueue.tasks.limits import RowTooLong, TokenLimit, model_limit, position_limit, tokenize
from tests.st_models import long_sentences
from tests.tiny_models import _make_tokenizer, sentences

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(("config", "limit"), [
    (BertConfig(max_position_embeddings=256), 256),
    (RobertaConfig(max_position_embeddings=514, pad_token_id=1), 512),  # positions start after the padding index
    ({"model_type": "xlm-roberta", "max_position_embeddings": 514, "pad_token_id": 1}, 512),
    ({"model_type": "gpt2", "n_positions": 1024}, 1024),  # a config.json read at submit
    (T5Config(), None),  # relative positions: no limit from the config
])
def test_position_limit_reads_each_family(config: object, limit: int | None) -> None:
    # given a model config; when its position limit is read, then it is the tokens a row may have
    assert position_limit(config) == limit


def test_model_limit_ignores_the_no_limit_sentinel_and_takes_the_smallest() -> None:
    # given a tokenizer that states 512 and one that states transformers' "no limit" (1e30)
    stated, unstated = _make_tokenizer(), _make_tokenizer()
    unstated.model_max_length = int(1e30)
    config = BertConfig(max_position_embeddings=256)

    # then the smallest real value wins; a sentence-transformers max_seq_length below both wins
    assert model_limit(config, stated) == 256
    assert model_limit(BertConfig(max_position_embeddings=4096), unstated) == 4096
    assert model_limit(config, stated, 128) == 128
    assert model_limit(T5Config(), unstated) is None


def test_tokenize_cuts_only_rows_over_the_limit_and_notes_them() -> None:
    # given short rows and rows past 160 tokens
    tok = _make_tokenizer()
    rows = sentences(4, seed=1) + long_sentences(2, 200)
    assert max(len(ids) for ids in tok(rows[:4])["input_ids"]) < 160
    limit = TokenLimit(160)

    # when they are tokenized under the limit
    enc = tokenize(tok, rows, limit)

    # then the long rows are cut to exactly the limit (the tokenizer's own truncation) and noted, the rest untouched
    assert limit.truncated == {4, 5}
    assert [len(ids) for ids in enc["input_ids"][4:]] == [160, 160]
    assert enc["input_ids"][4] == tok(rows[4], truncation=True, max_length=160)["input_ids"]
    assert enc["input_ids"][:4] == tok(rows[:4])["input_ids"]


def test_tokenize_refuses_a_long_row_with_its_length_when_not_truncating() -> None:
    # given a limit that does not truncate and a row past it
    tok = _make_tokenizer()
    row = long_sentences(1, 100)[0]

    # when it is tokenized, then it is refused with its full length and the limit
    with pytest.raises(RowTooLong, match=rf"^{len(tok(row)['input_ids'])} tokens; the model takes 64"):
        tokenize(tok, [row], TokenLimit(64, truncate=False))
    # and pairs are measured together
    pair_limit = TokenLimit(40)
    enc = tokenize(tok, ["a short question"], pair_limit, [row])
    assert pair_limit.truncated == {0} and len(enc["input_ids"][0]) == 40
