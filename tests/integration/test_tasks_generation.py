"""The generate-based tasks end to end: outputs equal ``model.generate`` called directly, one row at a time."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers

from hfqueue import Client

pytestmark = pytest.mark.timeout(120)

GREEDY = {"max_new_tokens": 10}


def direct_generate(model_dir: Path, prompts: list[str], seq2seq: bool, **kwargs: object) -> list[str]:
    """Each prompt alone through ``model.generate`` (no padding, no batching), new tokens decoded."""
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    cls = transformers.AutoModelForSeq2SeqLM if seq2seq else transformers.AutoModelForCausalLM
    model = cls.from_pretrained(model_dir).eval()
    out = []
    with torch.inference_mode():
        for prompt in prompts:
            enc = tok(prompt, return_tensors="pt")
            ids = model.generate(**enc, pad_token_id=tok.pad_token_id, **kwargs)[0]
            out.append(tok.decode(ids if seq2seq else ids[enc["input_ids"].shape[1]:], skip_special_tokens=True))
    return [t.strip() for t in out] if seq2seq else out


def test_text_generation_equals_direct_generate(client: Client, causal_lm: Path, texts: list[str]) -> None:
    # given prompts of varied length (batched together by the worker, left-padded)
    prompts = [t[:60] for t in texts[:16]]

    # when a text-generation job runs greedy
    job = client.submit(task="text-generation", model=str(causal_lm), inputs=prompts, options=GREEDY)
    ds = job.result(timeout=90)

    # then every continuation equals generate on that prompt alone
    assert ds["generated_text"] == direct_generate(causal_lm, prompts, seq2seq=False, max_new_tokens=10)
    assert len(set(ds["generated_text"])) > 1


def test_chat_messages_go_through_the_chat_template(client: Client, causal_lm: Path) -> None:
    # given conversations as lists of messages, and the same text applied through the template by hand
    chats = [[{"role": "user", "content": f"Tell me about item {i}."}] for i in range(4)]
    chats.append([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there."}])
    tok = transformers.AutoTokenizer.from_pretrained(causal_lm)
    templated = [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in chats]

    # when a text-generation job gets the conversations inline
    job = client.submit(task="text-generation", model=str(causal_lm), inputs=chats, options=GREEDY)
    ds = job.result(timeout=90)

    # then each reply equals generate on the templated prompt, and the input column keeps the messages
    model = transformers.AutoModelForCausalLM.from_pretrained(causal_lm).eval()
    for row, text in zip(ds, templated, strict=True):
        enc = tok(text, add_special_tokens=False, return_tensors="pt")
        with torch.inference_mode():
            ids = model.generate(**enc, pad_token_id=tok.pad_token_id, max_new_tokens=10)[0]
        assert row["generated_text"] == tok.decode(ids[enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert [json.loads(m) for m in ds["text"]] == chats


def test_sampling_with_a_seed_repeats(client: Client, causal_lm: Path, texts: list[str]) -> None:
    # given sampling options with a fixed seed
    options = {"max_new_tokens": 12, "do_sample": True, "temperature": 1.5, "top_k": 50, "seed": 7}

    # when the same job runs twice, and once with another seed
    runs = [client.submit(task="text-generation", model=str(causal_lm), inputs=texts[:8], options=options)
            for _ in range(2)]
    other = client.submit(task="text-generation", model=str(causal_lm), inputs=texts[:8],
                          options={**options, "seed": 8})

    # then both runs give the same text, and the other seed gives different text
    first, second = (r.result(timeout=90)["generated_text"] for r in runs)
    assert first == second and other.result(timeout=90)["generated_text"] != first


@pytest.mark.parametrize(("task", "column"), [("summarization", "summary_text"),
                                              ("text2text-generation", "generated_text")])
def test_seq2seq_tasks_equal_direct_generate(client: Client, seq2seq: Path, texts: list[str], task: str,
                                             column: str) -> None:
    # given a tiny encoder-decoder and a task prefix
    rows = texts[:12]

    # when the job runs with beam search and the prefix
    options = {"max_new_tokens": 8, "num_beams": 2, "prefix": "summarize: "}
    job = client.submit(task=task, model=str(seq2seq), inputs=rows, options=options)

    # then each output equals generate on "prefix + row" alone
    expected = direct_generate(seq2seq, ["summarize: " + r for r in rows], seq2seq=True, max_new_tokens=8,
                               num_beams=2)
    assert job.result(timeout=90)[column] == expected


def test_translation_uses_the_configured_prefix(client: Client, seq2seq: Path, texts: list[str],
                                                tmp_path: Path) -> None:
    # given a model whose config declares a prefix for translation_en_to_de, as T5's does
    model = tmp_path / "t5-like"
    shutil.copytree(seq2seq, model)
    config = json.loads((model / "config.json").read_text())
    config["task_specific_params"] = {"translation_en_to_de": {"prefix": "translate English to German: "}}
    (model / "config.json").write_text(json.dumps(config))

    # when a translation job names the language pair
    job = client.submit(task="translation", model=str(model), inputs=texts[:6],
                        options={"src_lang": "en", "tgt_lang": "de", "max_new_tokens": 8})

    # then the rows were prefixed as the config says
    expected = direct_generate(model, ["translate English to German: " + r for r in texts[:6]], seq2seq=True,
                               max_new_tokens=8)
    assert job.result(timeout=90)["translation_text"] == expected
