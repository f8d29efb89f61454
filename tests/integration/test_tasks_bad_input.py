"""Task-level bad input: a model that does not fit the task, a missing second column, bad generation options,
inline rows of the wrong shape. Known at submit → an error naming task, model and problem, nothing enqueued;
known only on the worker → the job fails with the reason."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import datasets
import pytest

from hfqueue import Client, InvalidSpecError, JobFailedError, JobSpec, SourceNotFoundError
from tests.task_models import without_chat_template

pytestmark = pytest.mark.timeout(120)


def submit_fails(client: Client, error: type[Exception], message: str, **spec: Any) -> None:
    """Submitting ``spec`` raises ``error`` matching ``message``, and nothing reaches Redis."""
    before = client.store.job_ids(10_000)
    with pytest.raises(error, match=re.escape(message)):
        client.submit(**spec)
    assert client.store.job_ids(10_000) == before
    assert client.redis.llen(client.settings.queue) == 0


def test_causal_lm_asked_to_summarize_is_refused_at_submit(idle_client: Client, causal_lm: Path) -> None:
    # given a decoder-only model, when it is submitted for summarization, then the error names all three
    submit_fails(idle_client, InvalidSpecError, f"model {str(causal_lm)!r} cannot run task 'summarization': it is a",
                 task="summarization", model=str(causal_lm), inputs=["a long text"])
    submit_fails(idle_client, InvalidSpecError, "needs a model with an AutoModelForSeq2SeqLM head",
                 task="summarization", model=str(causal_lm), inputs=["a long text"])


def test_sequence_classifier_asked_for_ner_is_refused_at_submit(idle_client: Client, classifier: Path) -> None:
    # given a sentence classifier, when it is submitted for ner, then it is refused as the wrong head
    submit_fails(idle_client, InvalidSpecError, "ForSequenceClassification, and token-classification needs",
                 task="ner", model=str(classifier), inputs=["Ada Lovelace lived in London."])


def test_classifier_without_an_entailment_label_is_refused_for_zero_shot(idle_client: Client,
                                                                        classifier: Path) -> None:
    submit_fails(idle_client, InvalidSpecError, "not an NLI model", task="zero-shot-classification",
                 model=str(classifier), inputs=["text"], options={"candidate_labels": ["a", "b"]})


def test_question_answering_needs_both_columns(idle_client: Client, qa_model: Path, tmp_path: Path) -> None:
    # given a dataset with questions but no context column
    folder = tmp_path / "qa"
    datasets.Dataset.from_dict({"question": ["why?"], "passage": ["because."]}).save_to_disk(folder)

    # when submitted with the default columns, or with one `column`, then each is refused clearly
    submit_fails(idle_client, SourceNotFoundError, "column 'context' not in the dataset",
                 task="question-answering", model=str(qa_model), dataset=str(folder))
    submit_fails(idle_client, InvalidSpecError, "name their columns with `columns`",
                 task="question-answering", model=str(qa_model), dataset=str(folder), column="question")
    submit_fails(idle_client, InvalidSpecError, "inputs[1]: task 'question-answering' takes rows as",
                 task="question-answering", model=str(qa_model),
                 inputs=[{"question": "q", "context": "c"}, {"question": "q"}])


BAD_OPTIONS: list[tuple[str, dict[str, Any], str]] = [
    ("sampling option without sampling", {"temperature": 0.7}, "temperature only apply when sampling"),
    ("min over max", {"min_new_tokens": 20, "max_new_tokens": 10}, "min_new_tokens (20) exceeds max_new_tokens"),
    ("zero beams", {"num_beams": 0}, "num_beams: Input should be greater than or equal to 1"),
    ("top_p above 1", {"do_sample": True, "top_p": 1.5}, "top_p: Input should be less than or equal to 1"),
    ("unknown option", {"beams": 2}, "beams: Extra inputs are not permitted"),
]


@pytest.mark.parametrize(("case", "options", "message"), BAD_OPTIONS, ids=[c[0] for c in BAD_OPTIONS])
def test_generation_options_are_validated_at_submit(idle_client: Client, causal_lm: Path, case: str,
                                                    options: dict[str, Any], message: str) -> None:
    submit_fails(idle_client, InvalidSpecError, message, task="text-generation", model=str(causal_lm),
                 inputs=["once upon a time"], options=options)


def test_inline_media_paths_must_exist(idle_client: Client, image_classifier: Path) -> None:
    submit_fails(idle_client, InvalidSpecError, "inputs[0]: image file '/no/such.png' does not exist",
                 task="image-classification", model=str(image_classifier), inputs=["/no/such.png"])


def test_quantization_on_a_cpu_worker_fails_the_job_with_the_reason(client: Client, causal_lm: Path) -> None:
    # given a CPU-only worker, when a job asks for 8-bit weights
    job = client.submit(task="text-generation", model=str(causal_lm), inputs=["hi"], quantization="8bit")

    # then it fails, saying what is needed
    with pytest.raises(JobFailedError, match="needs a CUDA worker; this worker runs on cpu"):
        job.wait(timeout=60)


def test_chat_rows_for_a_model_without_a_chat_template_fail_the_job(client: Client, causal_lm: Path,
                                                                    tmp_path: Path) -> None:
    # given a copy of the causal LM whose tokenizer has no chat template
    model = without_chat_template(causal_lm, tmp_path / "no-template")

    # when a job sends it chat messages
    job = client.submit(task="text-generation", model=str(model), inputs=[[{"role": "user", "content": "hi"}]])

    # then the job fails, saying so (not a row error per row)
    with pytest.raises(JobFailedError, match="chat rows need a chat template"):
        job.wait(timeout=60)


@pytest.mark.timeout(10)
def test_a_task_without_a_model_gets_the_pipeline_default() -> None:
    # given specs that name no model, then each task's documented default model is filled in, revision pinned
    spec = JobSpec(task="ner", inputs=["x"])
    assert (spec.model, spec.revision) == ("dbmdz/bert-large-cased-finetuned-conll03-english", "4c53496")
    assert JobSpec(task="summarization", inputs=["x"]).model == "sshleifer/distilbart-cnn-12-6"
    assert JobSpec(task="question-answering", inputs=[{"question": "q", "context": "c"}]).columns == \
        {"question": "question", "context": "context"}


def test_trust_remote_code_is_refused_unless_the_worker_allows_it(client: Client, encoder: Path) -> None:
    # given a worker with the default HFQ_ALLOW_REMOTE_CODE=false
    assert client.settings.allow_remote_code is False

    # when a job asks to run the model's own code
    job = client.submit(task="feature-extraction", model=str(encoder), inputs=["hi"], trust_remote_code=True)

    # then the job fails before any model code runs, naming the setting that would allow it
    with pytest.raises(JobFailedError, match="HFQ_ALLOW_REMOTE_CODE=true"):
        job.wait(timeout=60)
