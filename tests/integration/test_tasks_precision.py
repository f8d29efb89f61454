"""Every task runs in float16 and bfloat16, the precisions a GPU worker's ``dtype`` auto picks, on the session's real
worker (the CPU runs both). What breaks there and not in float32 is the task's own handling of tensors: inputs left in
float32 for a half-precision model (speech recognition did), outputs a NumPy conversion refuses (bfloat16)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hfqueue import Client, JobState
from tests.task_models import wav_bytes

pytestmark = pytest.mark.timeout(120)

# task -> (the session fixture of its tiny model, its options); the rows come from rows() below
TASKS: dict[str, tuple[str, dict[str, Any]]] = {
    "feature-extraction": ("encoder", {}),
    "feature-extraction (sentence-transformers)": ("st_cls", {}),
    "text-classification": ("classifier", {}),
    "token-classification": ("token_classifier", {}),
    "zero-shot-classification": ("nli_classifier", {"candidate_labels": ["sports", "politics"]}),
    "fill-mask": ("masked_lm", {}),
    "text-generation": ("causal_lm", {"max_new_tokens": 4}),
    "summarization": ("seq2seq", {"max_new_tokens": 4}),
    "question-answering": ("qa_model", {}),
    "image-classification": ("image_classifier", {}),
    "automatic-speech-recognition": ("speech_ctc", {}),
}


def rows(task: str, texts: list[str], folder: Path) -> list[Any]:
    """Six rows of the kind ``task`` takes."""
    if task == "fill-mask":
        return [f"{t} [MASK]" for t in texts[:6]]
    if task == "question-answering":
        return [{"question": "what is it about?", "context": t} for t in texts[:6]]
    if task == "image-classification":
        from tests.task_models import png_bytes

        paths = [folder / f"image{i}.png" for i in range(6)]
        for i, path in enumerate(paths):
            path.write_bytes(png_bytes(i))
        return [str(p) for p in paths]
    if task == "automatic-speech-recognition":
        paths = [folder / f"clip{i}.wav" for i in range(6)]
        for i, path in enumerate(paths):
            path.write_bytes(wav_bytes(i))
        return [str(p) for p in paths]
    return texts[:6]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_runs_in_reduced_precision(client: Client, texts: list[str], tmp_path: Path,
                                              request: pytest.FixtureRequest, name: str, dtype: str) -> None:
    # given a task's tiny model and six rows of its kind
    fixture, options = TASKS[name]
    model = request.getfixturevalue(fixture)
    task = name.split(" ")[0]

    # when a job runs them in the reduced precision
    job = client.submit(task=task, model=str(model), inputs=rows(task, texts, tmp_path), options=options,
                        dtype=dtype)
    status = job.wait(timeout=90)

    # then it ran in that precision and every row has its output
    assert (status.state, status.dtype, status.rows_done) == (JobState.COMPLETED, dtype, 6), job.errors().to_list()
