"""Jobs on exported engines, through a real worker: outputs equal torch's, and an engine that drifts is refused.

The tiny models are real transformers models (tests/tiny_models.py, tests/st_models.py); each job's outputs are
compared with the same job on torch, which tests/integration/test_model_semantics.py checks against
sentence-transformers and the pipelines.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hfqueue import Client, InvalidSpecError, JobFailedError
from tests.tiny_models import sentences

pytestmark = pytest.mark.timeout(240)


def vectors(client: Client, model: Path, engine: str, rows: list[str]) -> tuple[np.ndarray, dict]:
    job = client.submit(task="feature-extraction", model=str(model), inputs=rows, engine=engine, chunk_size=16)
    found = np.asarray(job.result(timeout=180)["embedding"], dtype=np.float32)
    manifest = (job.output_dir / "manifest.json").read_text()
    return found, __import__("json").loads(manifest)


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a / np.linalg.norm(a, axis=1, keepdims=True)) * (b / np.linalg.norm(b, axis=1, keepdims=True)))
                 .sum(axis=1).min())


@pytest.mark.parametrize("model_fixture", ["st_cls", "encoder"])
def test_embeddings_on_onnx_equal_torch(client: Client, model_fixture: str, request: pytest.FixtureRequest) -> None:
    # given a sentence-transformers model (its own modules after the body) and a plain encoder, and rows of
    # mixed lengths in chunks of 16
    model, rows = request.getfixturevalue(model_fixture), sentences(40)
    # when the same rows run on torch, on onnx, and on onnx-int8
    torch_vectors, _ = vectors(client, model, "torch", rows)
    onnx_vectors, manifest = vectors(client, model, "onnx", rows)
    int8_vectors, _ = vectors(client, model, "onnx-int8", rows)
    # then onnx is float32-exact, int8 within its tolerance, and the manifest says which engine ran
    assert min_cosine(onnx_vectors, torch_vectors) >= 0.9999
    assert min_cosine(int8_vectors, torch_vectors) >= 0.99
    assert manifest["resolved"]["engine"] == "onnx"


def test_text_classification_on_onnx_gives_torch_labels_and_scores(client: Client, classifier: Path) -> None:
    # given a classifier and rows, sentence pairs among them
    rows = [*sentences(12), *({"text": s, "text_pair": t} for s, t in zip(sentences(4, seed=1), sentences(4, 2),
                                                                            strict=True))]

    def run(engine: str) -> list[dict]:
        job = client.submit(task="text-classification", model=str(classifier), inputs=rows, engine=engine,
                            options={"top_k": None})
        return job.result(timeout=180).to_list()

    # when they run on torch and on onnx
    on_torch, on_onnx = run("torch"), run("onnx")
    # then every row has the same labels in the same order and the same scores
    for a, b in zip(on_torch, on_onnx, strict=True):
        assert a["labels"] == b["labels"]
        assert np.allclose(a["scores"], b["scores"], atol=1e-4)


def test_an_engine_beyond_its_tolerance_fails_the_job_naming_it(client: Client, classifier: Path) -> None:
    # given the tiny classifier, whose very wide weights int8 cannot carry (measured cosine 0.68-0.98)
    job = client.submit(task="text-classification", model=str(classifier), inputs=sentences(4), engine="onnx-int8")
    # when it runs; then the job fails before any row runs, naming the engine, the model and the measured difference
    with pytest.raises(JobFailedError) as failed:
        job.wait(timeout=180)
    message = str(failed.value)
    assert "onnx-int8" in message and str(classifier) in message and "min cosine" in message
    assert job.status().rows_done == 0


@pytest.mark.parametrize(("fields", "expected"), [
    ({"task": "text-generation", "engine": "onnx"}, "cannot run task 'text-generation'"),
    ({"task": "feature-extraction", "engine": "onnx", "dtype": "bfloat16"}, "drop dtype='bfloat16'"),
    ({"task": "feature-extraction", "engine": "onnx-int8", "quantization": "8bit"}, "drop quantization='8bit'"),
])
def test_an_engine_that_cannot_run_the_job_is_refused_at_submit(idle_client: Client, fields: dict,
                                                                expected: str) -> None:
    # given a job whose engine cannot run it; when submitted; then nothing is enqueued and the reason is named
    with pytest.raises(InvalidSpecError, match=expected):
        idle_client.submit(inputs=["a row"], model="org/model", **fields)


def entities_on(client: Client, model: Path, engine: str, rows: list[str]) -> list[list[dict]]:
    job = client.submit(task="token-classification", model=str(model), inputs=rows, engine=engine)
    found = job.result(timeout=180)["entities"]
    assert __import__("json").loads((job.output_dir / "manifest.json").read_text())["resolved"]["engine"] == engine
    return found


def ran_on_an_engine(torch_scores: list[float], engine_scores: list[float]) -> bool:
    """Whether the scores came from another body than torch's: float32 kernel order leaves some of them differing
    in the last bits (measured: up to 4e-5), where torch run twice gives the same bits."""
    return bool(np.any(np.asarray(torch_scores) != np.asarray(engine_scores)))


def test_token_classification_on_onnx_gives_torch_entities_and_scores(client: Client, token_classifier: Path) -> None:
    # given a token classifier and rows of mixed lengths (several batches, each padded)
    rows = sentences(24)
    # when they run on torch and on onnx, through the same pipeline
    on_torch, on_onnx = entities_on(client, token_classifier, "torch", rows), \
        entities_on(client, token_classifier, "onnx", rows)
    # then every row has the same entities, at the same offsets, with the same scores
    assert sum(len(e) for e in on_torch) > 0
    for a, b in zip(on_torch, on_onnx, strict=True):
        assert [(e["entity_group"], e["word"], e["start"], e["end"]) for e in a] == \
               [(e["entity_group"], e["word"], e["start"], e["end"]) for e in b]
        assert np.allclose([e["score"] for e in a], [e["score"] for e in b], atol=1e-4)
    # and the engine, not torch, ran the pipeline's model call
    assert ran_on_an_engine([e["score"] for r in on_torch for e in r], [e["score"] for r in on_onnx for e in r])


def test_zero_shot_on_onnx_gives_torch_labels_and_scores(client: Client, nli_classifier: Path) -> None:
    # given an NLI model, rows and candidate labels, single- and multi-label
    rows, labels = sentences(12, seed=3), ["programming", "cooking", "sports"]

    def run(engine: str, multi_label: bool) -> list[dict]:
        job = client.submit(task="zero-shot-classification", model=str(nli_classifier), inputs=rows, engine=engine,
                            options={"candidate_labels": labels, "multi_label": multi_label})
        return job.result(timeout=180).to_list()

    for multi_label in (False, True):
        # when they run on torch and on onnx
        on_torch, on_onnx = run("torch", multi_label), run("onnx", multi_label)
        # then each label has torch's score, and each rank torch's label or one torch scores alike within 1e-4
        # (the tiny model scores some labels alike to 1e-5, where float32 kernel order may swap them)
        for a, b in zip(on_torch, on_onnx, strict=True):
            on_onnx_of, on_torch_of = (dict(zip(r["labels"], r["scores"], strict=True)) for r in (b, a))
            assert np.allclose(a["scores"], [on_onnx_of[label] for label in a["labels"]], atol=1e-4)
            assert all(x == y or abs(on_torch_of[x] - on_torch_of[y]) <= 1e-4
                       for x, y in zip(a["labels"], b["labels"], strict=True))
        # and the engine, not torch, ran the pipeline's model call
        assert ran_on_an_engine([s for r in on_torch for s in sorted(r["scores"])],
                                [s for r in on_onnx for s in sorted(r["scores"])])


@pytest.mark.parametrize(("task", "model_fixture", "options"), [
    ("token-classification", "token_classifier", {}),
    ("zero-shot-classification", "nli_classifier", {"candidate_labels": ["programming", "cooking"]}),
])
def test_int8_on_the_tiny_pipeline_models_is_refused_naming_it(client: Client, task: str, model_fixture: str,
                                                              options: dict, request: pytest.FixtureRequest) -> None:
    # given a tiny token classifier or NLI model, built with initializer_range 1.0: weights too wide for int8
    # (measured min cosine to torch: -0.12 per token, and 0.43 to 0.78 per row)
    model = request.getfixturevalue(model_fixture)
    job = client.submit(task=task, model=str(model), inputs=sentences(4), engine="onnx-int8", options=options)
    # when it runs; then it fails before any row runs, naming the engine, the model and the measured difference
    with pytest.raises(JobFailedError) as failed:
        job.wait(timeout=180)
    message = str(failed.value)
    assert "onnx-int8" in message and str(model) in message and "min cosine" in message
    assert job.status().rows_done == 0
