"""Jobs end to end: a real Redis, a real worker process, tiny real models; results checked against the
same model run directly in this process, one row at a time."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import transformers

from hfqueue import Client, JobState
from tests.conftest import LABELS, settings_env

pytestmark = pytest.mark.timeout(120)


def direct_embeddings(model_dir: Path, rows: list[str]) -> np.ndarray:
    """Mean-pooled last hidden states, computed one row at a time without hfqueue."""
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModel.from_pretrained(model_dir).eval()
    out = []
    with torch.inference_mode():
        for row in rows:
            enc = tok(row, return_tensors="pt", truncation=True, max_length=512)
            out.append(model(**enc).last_hidden_state[0].mean(0).numpy())
    return np.stack(out)


def direct_labels(model_dir: Path, rows: list[str]) -> list[str]:
    """The argmax label of each row, computed one row at a time without hfqueue."""
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    with torch.inference_mode():
        return [model.config.id2label[int(model(**tok(r, return_tensors="pt")).logits.argmax())] for r in rows]


def test_local_dataset_job_matches_the_model_run_directly(client: Client, encoder: Path, texts: list[str],
                                                           tmp_path: Path) -> None:
    # given a local dataset folder (save_to_disk) with a train split of 60 rows
    folder = tmp_path / "ds"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": texts, "id": list(range(60))})}).save_to_disk(folder)

    # when a feature-extraction job runs over it in chunks of 16
    job = client.submit(task="feature-extraction", model=str(encoder), dataset=str(folder), split="train")
    status = job.wait(timeout=90)
    ds = job.result()

    # then every row is there once, in input order, equal to running the model directly
    assert status.state == JobState.COMPLETED and status.chunks_total == 4
    assert (status.rows_done, status.rows_failed) == (60, 0)
    assert ds["row_idx"] == list(range(60)) and ds["text"] == texts
    np.testing.assert_allclose(np.asarray(ds["embedding"]), direct_embeddings(encoder, texts), atol=1e-5)


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_data_files_job(client: Client, classifier: Path, texts: list[str], tmp_path: Path, fmt: str) -> None:
    # given the sentences as a data file, in a column named "sentence"
    ds = datasets.Dataset.from_dict({"sentence": texts[:40]})
    path = tmp_path / f"rows.{fmt}"
    {"csv": ds.to_csv, "jsonl": ds.to_json, "parquet": ds.to_parquet}[fmt](str(path))

    # when a text-classification job runs over it
    job = client.submit(task="sentiment-analysis", model=str(classifier), dataset=str(path), column="sentence")
    result = job.result(timeout=90)

    # then labels equal the model's own argmax, row by row, and scores are probabilities
    assert result["label"] == direct_labels(classifier, texts[:40])
    assert set(result["label"]) <= set(LABELS) and len(set(result["label"])) > 1
    assert all(1 / len(LABELS) <= s <= 1 for s in result["score"])


def test_inline_inputs_job(client: Client, classifier: Path, texts: list[str]) -> None:
    # given a plain list of 20 rows
    rows = texts[:20]

    # when it is submitted inline
    job = client.submit(task="text-classification", model=str(classifier), inputs=rows)

    # then the results come back in the same order with the same labels as running the model directly
    result = job.result(timeout=90)
    assert result["text"] == rows
    assert result["label"] == direct_labels(classifier, rows)


def test_manifest_and_folder_are_the_durable_record(client: Client, encoder: Path, texts: list[str]) -> None:
    # given a finished job
    job = client.submit(task="embeddings", model=str(encoder), inputs=texts[:30], options={"normalize": True},
                        output_dir="manifest-check")
    job.wait(timeout=90)

    # when its folder is read without hfqueue
    manifest = json.loads((job.output_dir / "manifest.json").read_text())
    loaded = datasets.load_dataset("parquet", data_files=str(job.output_dir / "*.parquet"), split="train")

    # then the manifest records spec, state, counts and timings, and the parts load as one dataset
    assert manifest["state"] == "completed" and manifest["rows_done"] == 30 and manifest["chunks_total"] == 2
    assert manifest["spec"]["task"] == "feature-extraction" and manifest["spec"]["options"]["normalize"] is True
    assert manifest["finished_at"] >= manifest["started_at"] >= manifest["created_at"]
    assert sorted(loaded["row_idx"]) == list(range(30))
    np.testing.assert_allclose(np.linalg.norm(np.asarray(loaded["embedding"]), axis=1), 1.0, atol=1e-5)


def test_two_jobs_at_once(client: Client, encoder: Path, classifier: Path, texts: list[str]) -> None:
    # given two jobs for two models submitted back to back
    a = client.submit(task="feature-extraction", model=str(encoder), inputs=texts[:40])
    b = client.submit(task="text-classification", model=str(classifier), inputs=texts[20:60])

    # when both are awaited
    ra, rb = a.result(timeout=90), b.result(timeout=90)

    # then each has its own complete, correct results
    assert ra["text"] == texts[:40] and rb["text"] == texts[20:60]
    np.testing.assert_allclose(np.asarray(ra["embedding"]), direct_embeddings(encoder, texts[:40]), atol=1e-5)
    assert rb["label"] == direct_labels(classifier, texts[20:60])


def test_status_listing_and_reattach_from_another_process(client: Client, settings, encoder: Path,
                                                         texts: list[str]) -> None:
    # given a finished job
    job = client.submit(task="feature-extraction", model=str(encoder), inputs=texts[:10])
    job.wait(timeout=90)

    # when another process reattaches by id
    code = f"from hfqueue import Client; print(Client().job({job.id!r}).status().model_dump_json())"
    out = subprocess.run([sys.executable, "-c", code], env=settings_env(settings), capture_output=True,
                         text=True, timeout=60, check=True).stdout

    # then it sees the same final status, and the job is listed
    seen = json.loads(out)
    assert seen["state"] == "completed" and seen["rows_done"] == 10 and seen["job_id"] == job.id
    assert job.id in [s.job_id for s in client.jobs()]
    status = job.status()
    assert status.rows_per_second > 0 and status.eta_seconds == 0.0


def test_hfq_run_from_the_command_line(worker, settings, encoder: Path, texts: list[str], tmp_path: Path) -> None:
    # given a jsonl file of sentences
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[:25]))

    # when `hfq run` submits it and waits
    proc = subprocess.run(
        [sys.executable, "-m", "hfqueue", "run", "--task", "feature-extraction", "--model", str(encoder),
         "--dataset", str(path), "--option", "pooling=cls", "--json"],
        env=settings_env(settings), capture_output=True, text=True, timeout=90)

    # then it exits 0 and prints the final status; `hfq status` and `hfq jobs` agree
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout)
    assert status["state"] == "completed" and status["rows_done"] == 25
    again = subprocess.run([sys.executable, "-m", "hfqueue", "status", status["job_id"], "--json", "--chunks"],
                           env=settings_env(settings), capture_output=True, text=True, timeout=60)
    assert json.loads(again.stdout)["chunk_states"]["1"]["state"] == "done"
    listed = subprocess.run([sys.executable, "-m", "hfqueue", "jobs", "--json"], env=settings_env(settings),
                            capture_output=True, text=True, timeout=60)
    assert status["job_id"] in [j["job_id"] for j in json.loads(listed.stdout)]


def test_a_model_folder_rewritten_in_place_runs_its_new_weights(client: Client, encoder: Path, texts: list[str],
                                                                tmp_path: Path) -> None:
    # given a copy of the encoder that the worker has loaded (its model cache keeps it resident)
    model = Path(shutil.copytree(encoder, tmp_path / "model"))
    rows = texts[:10]
    before = np.asarray(client.submit(task="feature-extraction", model=str(model), inputs=rows)
                        .result(timeout=90)["embedding"])
    # when new weights are saved into the same folder, and the same rows run again
    new = transformers.AutoModel.from_pretrained(encoder)
    with torch.no_grad():
        new.embeddings.word_embeddings.weight.mul_(-1.5)
    new.save_pretrained(model)
    after = np.asarray(client.submit(task="feature-extraction", model=str(model), inputs=rows)
                       .result(timeout=90)["embedding"])
    # then the job ran the new weights, as loading the folder now gives, not the resident old ones
    np.testing.assert_allclose(after, direct_embeddings(model, rows), atol=1e-5)
    assert np.abs(after - before).max() > 1e-2


def test_a_local_dataset_folder_rewritten_in_place_is_read_anew(client: Client, encoder: Path, texts: list[str],
                                                               tmp_path: Path) -> None:
    # given a folder of parquet files (a Hub-style dataset folder, not save_to_disk) that a job has read
    folder = tmp_path / "rows"
    folder.mkdir()
    datasets.Dataset.from_dict({"text": texts[:8]}).to_parquet(folder / "train.parquet")
    assert client.submit(task="feature-extraction", model=str(encoder), dataset=str(folder)).result(
        timeout=90)["text"] == texts[:8]
    # when its file is rewritten with other rows, and the folder runs again
    datasets.Dataset.from_dict({"text": texts[8:20]}).to_parquet(folder / "train.parquet")
    again = client.submit(task="feature-extraction", model=str(encoder), dataset=str(folder)).result(timeout=90)
    # then the worker read the new rows, not the copy it opened before
    assert again["text"] == texts[8:20]
