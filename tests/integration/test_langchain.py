"""hfqueue.integrations.langchain through LangChain's own standard test suites (langchain-tests), against the
session's real worker: a tiny GPT-2 with a chat template for the chat model, the tiny sentence-transformers model
and the real all-MiniLM-L6-v2 for embeddings. Plus what the suites do not check: vectors equal a job's, stop strings
and max tokens reach the model, a failed row raises with its reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_tests.integration_tests import ChatModelIntegrationTests, EmbeddingsIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests, EmbeddingsUnitTests

from hfqueue import Client, HfqError
from hfqueue.cli.demo import minilm_path
from hfqueue.integrations.langchain import ChatHfqueue, HfqueueEmbeddings
from tests.conftest import minilm_installed
from tests.tiny_models import sentences

pytestmark = pytest.mark.timeout(120)

# Set by the autouse fixture below: the standard suites build their models from class properties.
_used: dict[str, Any] = {}


@pytest.fixture(autouse=True)
def _session_models(client: Client, causal_lm: Path, st_cls: Path) -> None:
    _used.update(client=client, causal_lm=str(causal_lm), st_cls=str(st_cls),
                 minilm=str(minilm_path()) if minilm_installed() else "")


class _Chat:
    """The chat model every chat suite builds: the tiny GPT-2 on the session's worker."""

    @property
    def chat_model_class(self) -> type[ChatHfqueue]:
        return ChatHfqueue

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": _used["causal_lm"], "client": _used["client"]}


class _Embeddings:
    """The embeddings every embeddings suite builds (``model_key``: the model from ``_used``)."""

    model_key = "st_cls"

    @property
    def embeddings_class(self) -> type[HfqueueEmbeddings]:
        return HfqueueEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"model": _used[self.model_key], "client": _used["client"]}


class TestChatUnit(_Chat, ChatModelUnitTests):
    pass


class TestChatIntegration(_Chat, ChatModelIntegrationTests):
    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {**super().chat_model_params, "max_tokens": 8}

    # A local text-generation model has no tool calling, structured output or media inputs: those standard tests are
    # skipped by the suite itself once these say so.
    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def supports_json_mode(self) -> bool:
        return False


class TestEmbeddingsUnit(_Embeddings, EmbeddingsUnitTests):
    pass


class TestEmbeddingsIntegration(_Embeddings, EmbeddingsIntegrationTests):
    pass


@pytest.mark.skipif(not minilm_installed(), reason="the real all-MiniLM-L6-v2 package is a dev dependency")
class TestMiniLMEmbeddingsIntegration(_Embeddings, EmbeddingsIntegrationTests):
    model_key = "minilm"


def test_vectors_equal_a_feature_extraction_job(client: Client, st_cls: Path) -> None:
    # given texts, embedded as documents (a job, here on the request lane and as a chunked job) and one as a query
    texts = sentences(40, seed=23)
    small = HfqueueEmbeddings(model=str(st_cls), client=client).embed_documents(texts[:5])
    large = HfqueueEmbeddings(model=str(st_cls), client=client, chunk_size=16).embed_documents(texts)
    query = HfqueueEmbeddings(model=str(st_cls), client=client).embed_query(texts[0])
    # then each equals the same rows' vectors from a plain feature-extraction job
    job = client.submit(task="feature-extraction", model=str(st_cls), inputs=texts)
    expected = np.asarray(job.result(timeout=60)["embedding"], dtype=np.float32)
    np.testing.assert_allclose(np.asarray(large), expected, atol=1e-5)
    np.testing.assert_allclose(np.asarray(small), expected[:5], atol=1e-5)
    np.testing.assert_allclose(np.asarray(query), expected[0], atol=1e-5)
    # and with sentence-transformers' own encode of the same model (CLS pooling, normalized)
    from sentence_transformers import SentenceTransformer

    library = SentenceTransformer(str(st_cls), device="cpu").encode(texts, convert_to_numpy=True)
    np.testing.assert_allclose(np.asarray(large), library, atol=1e-5)


def test_chat_messages_go_through_the_chat_template_with_stop_and_max_tokens(client: Client, causal_lm: Path) -> None:
    # given a conversation, answered once without limits
    messages = [SystemMessage("You are brief."), HumanMessage("Say hello.")]
    free = ChatHfqueue(model=str(causal_lm), client=client, max_tokens=12).invoke(messages)
    # when the same runs with a stop string taken from that answer, and with 3 tokens at most
    word = next(w for w in free.text.split() if len(w) > 2)
    stopped = ChatHfqueue(model=str(causal_lm), client=client, max_tokens=12).invoke(messages, stop=[word])
    short = ChatHfqueue(model=str(causal_lm), client=client, max_tokens=3).invoke(messages)
    # then the answer is what a text-generation job gives for the same messages, cut before the stop string, and short
    job = client.submit(task="text-generation", model=str(causal_lm), options={"max_new_tokens": 12},
                        inputs=[[{"role": "system", "content": "You are brief."},
                                 {"role": "user", "content": "Say hello."}]])
    assert free.text == job.result(timeout=60)["generated_text"][0]
    # and what the model's own chat template and greedy model.generate give
    import torch
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(causal_lm)
    enc = tok(tok.apply_chat_template([{"role": "system", "content": "You are brief."},
                                       {"role": "user", "content": "Say hello."}],
                                      add_generation_prompt=True, tokenize=False),
              add_special_tokens=False, return_tensors="pt")
    enc.pop("token_type_ids", None)
    with torch.inference_mode():
        ids = transformers.AutoModelForCausalLM.from_pretrained(causal_lm).eval().generate(
            **enc, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)[0]
    assert free.text == tok.decode(ids[enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert stopped.text == free.text[:free.text.find(word)]
    assert short.usage_metadata is not None and short.usage_metadata["output_tokens"] <= 3
    assert free.response_metadata["finish_reason"] in ("stop", "length")


def test_a_failed_row_raises_with_its_reason(client: Client, st_cls: Path) -> None:
    # given embeddings that must not cut long texts, and a text far past the model's input limit among short ones
    embeddings = HfqueueEmbeddings(model=str(st_cls), client=client, truncate=False)
    texts = [*sentences(3, seed=29), " ".join(sentences(300, seed=31))]
    # when the documents and the long text as a query are embedded, then each raises naming the row and why
    with pytest.raises(HfqError, match=r"1 of 4 texts failed; text 3: RowTooLong: \d+ tokens; the model takes 512"):
        embeddings.embed_documents(texts)
    with pytest.raises(HfqError, match=r"1 of 1 inputs failed; input 0: RowTooLong: \d+ tokens"):
        embeddings.embed_query(texts[-1])
    # and the same texts, cut to the limit, embed
    assert len(HfqueueEmbeddings(model=str(st_cls), client=client).embed_documents(texts)) == 4
