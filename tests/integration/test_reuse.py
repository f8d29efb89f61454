"""Reusing earlier results through a real worker: only new rows reach the model, and what is reused equals computing.

One worker with the result cache on (its own queue and metrics port) serves the module; the forward passes are
counted by its metrics (``hfq_rows_total``: rows that ran through the model; ``hfq_rows_reused_total``: rows copied).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import transformers

from hfqueue import Client, Job, Settings
from hfqueue.state.embedded import free_port
from tests.adapter_models import build_lora
from tests.conftest import WorkerProcess, wait_serving
from tests.integration.monitoring import scrape, total
from tests.tiny_models import sentences

pytestmark = pytest.mark.timeout(180)


@dataclass
class Reusing:
    settings: Settings
    client: Client
    worker: WorkerProcess

    def ran(self) -> float:
        """Rows the worker has run through a model so far (outcome ok or failed)."""
        samples = scrape(f"http://127.0.0.1:{self.settings.metrics_port}/metrics")
        return total(samples, "hfq_rows_total")

    def reused(self) -> float:
        samples = scrape(f"http://127.0.0.1:{self.settings.metrics_port}/metrics")
        return total(samples, "hfq_rows_reused_total")


@pytest.fixture(scope="module")
def reusing(settings: Settings, worker_factory: Callable[..., WorkerProcess],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Reusing]:
    root = tmp_path_factory.mktemp("reuse")
    mine = settings.model_copy(update={"queue": f"reuse-{time.monotonic_ns()}", "reuse": True,
                                       "output_root": root / "results", "metrics_port": free_port(),
                                       "metrics_address": "127.0.0.1", "small_job_rows": 8})
    worker = worker_factory(mine)
    wait_serving(f"http://127.0.0.1:{mine.metrics_port}/metrics", worker.proc, worker.log, "worker metrics", 30)
    with Client(mine) as client:
        yield Reusing(mine, client, worker)


def embeddings(job: Job) -> np.ndarray:
    return np.asarray(job.result(timeout=120)["embedding"], dtype=np.float32)


def write_rows(path: Path, rows: list[str]) -> Path:
    pq.write_table(pa.table({"text": rows}), path)
    return path


def test_a_grown_data_file_runs_only_its_new_rows(reusing: Reusing, encoder: Path, tmp_path: Path) -> None:
    # given a data file of 40 rows, embedded once
    rows = sentences(50)
    data = write_rows(tmp_path / "data.parquet", rows[:40])
    first = reusing.client.submit(task="feature-extraction", model=str(encoder), dataset=str(data), chunk_size=16)
    embeddings(first)
    assert first.status().rows_reused == 0
    # when 10 rows are appended (and one old row repeats) and the file runs again
    grown = write_rows(tmp_path / "data.parquet", [*rows[:40], *rows[40:], rows[3]])
    ran, reused = reusing.ran(), reusing.reused()
    second = reusing.client.submit(task="feature-extraction", model=str(encoder), dataset=str(grown), chunk_size=16)
    found = embeddings(second)
    # then only the 10 new rows reached the model, the 41 others were copied, and every count says so
    assert reusing.ran() - ran == 10
    assert reusing.reused() - reused == 41
    status = second.status()
    assert (status.rows_done, status.rows_reused) == (51, 41)
    manifest = json.loads((second.output_dir / "manifest.json").read_text())
    assert manifest["rows_reused"] == 41 and manifest["resolved"]["engine"] == "torch"
    # and the results equal a job that computed every row, row for row, and the model's own output
    full = reusing.client.submit(task="feature-extraction", model=str(encoder), dataset=str(grown), chunk_size=16,
                                 reuse=False)
    np.testing.assert_allclose(found, embeddings(full), atol=1e-5)
    assert full.status().rows_reused == 0
    assert list(second.result(timeout=5)["row_idx"]) == list(range(51))
    np.testing.assert_array_equal(found[3], found[50])


def _perturbed(encoder: Path, folder: Path) -> Path:
    model = transformers.AutoModel.from_pretrained(encoder)
    with torch.no_grad():
        model.embeddings.word_embeddings.weight.add_(0.5)
    model.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("change", ["option", "dtype", "revision", "adapter"])
def test_anything_that_changes_outputs_reuses_nothing(reusing: Reusing, encoder: Path, tmp_path: Path,
                                                      change: str) -> None:
    # given a copy of the encoder and rows embedded once with it
    model = Path(shutil.copytree(encoder, tmp_path / "model"))
    rows = sentences(12, seed=7)
    reusing.client.submit(task="feature-extraction", model=str(model), inputs=rows, chunk_size=16).wait(timeout=120)
    # when the same rows run again with one thing changed that changes the outputs
    fields: dict = {"task": "feature-extraction", "model": str(model), "inputs": rows, "chunk_size": 16}
    if change == "option":
        fields["options"] = {"normalize": True}
    elif change == "dtype":
        fields["dtype"] = "bfloat16"
    elif change == "revision":  # the same folder, new weights: its content hash changes
        _perturbed(encoder, model)
    else:
        fields["adapter"] = str(build_lora(model, tmp_path / "lora", seed=1, auto_class="AutoModel"))
    ran = reusing.ran()
    job = reusing.client.submit(**fields)
    job.wait(timeout=120)
    # then no row is reused: every one reached the model
    assert job.status().rows_reused == 0
    assert reusing.ran() - ran == len(rows)
    if change == "revision":  # and it ran the new weights: a copy the worker never loaded gives the same
        fresh = shutil.copytree(model, tmp_path / "fresh")
        np.testing.assert_allclose(embeddings(job), embeddings(reusing.client.submit(
            **{**fields, "model": str(fresh), "reuse": False})), atol=1e-6)


def test_sampling_without_a_seed_is_never_stored_and_with_one_is_reused(reusing: Reusing, causal_lm: Path) -> None:
    # given prompts sampled without a seed, twice
    prompts = sentences(6, seed=3)
    options = {"do_sample": True, "max_new_tokens": 4}
    for _ in range(2):
        job = reusing.client.submit(task="text-generation", model=str(causal_lm), inputs=prompts, options=options)
        job.wait(timeout=120)
        # then the second run reused nothing (the first stored nothing)
        assert job.status().rows_reused == 0
    # when they are sampled with a seed, twice
    seeded = [reusing.client.submit(task="text-generation", model=str(causal_lm), inputs=prompts,
                                    options={**options, "seed": 5}) for _ in range(2)]
    texts = [list(job.result(timeout=120)["generated_text"]) for job in seeded]
    # then the second run copies the first's texts
    assert seeded[1].status().rows_reused == len(prompts)
    assert texts[0] == texts[1]


def test_small_jobs_on_the_request_lane_reuse_too(reusing: Reusing, classifier: Path) -> None:
    # given a small job (at most HFQ_SMALL_JOB_ROWS rows: it runs on the request lane) of labels and scores
    rows = sentences(5, seed=11)
    first = reusing.client.submit(task="text-classification", model=str(classifier), inputs=rows,
                                  options={"top_k": None})
    expected = first.result(timeout=60).to_list()
    # when it runs again
    ran = reusing.ran()
    second = reusing.client.submit(task="text-classification", model=str(classifier), inputs=rows,
                                   options={"top_k": None})
    found = second.result(timeout=60).to_list()
    # then its rows came from the cache, whole and in order
    assert second.status().rows_reused == len(rows)
    assert reusing.ran() == ran
    assert found == expected


def test_a_corrupted_pack_is_a_miss_and_a_warning(reusing: Reusing, encoder: Path) -> None:
    # given rows embedded once, and then every stored pack of the cache damaged on disk
    rows = sentences(20, seed=13)
    first = reusing.client.submit(task="feature-extraction", model=str(encoder), inputs=rows, chunk_size=16)
    expected = embeddings(first)
    for pack in (reusing.settings.result_cache_dir() / "packs").glob("*/*.arrow"):
        data = bytearray(pack.read_bytes())
        data[len(data) // 2] ^= 0xFF
        pack.write_bytes(bytes(data))
    # when the rows run again
    again = reusing.client.submit(task="feature-extraction", model=str(encoder), inputs=rows, chunk_size=16)
    found = embeddings(again)
    # then nothing wrong was copied: every row was computed, equal to the first run, and the worker warned
    assert again.status().rows_reused == 0
    np.testing.assert_allclose(found, expected, atol=1e-5)
    assert "is unreadable" in reusing.worker.log.read_text()
    # and the damaged packs were dropped and replaced: a third run reuses every row
    third = reusing.client.submit(task="feature-extraction", model=str(encoder), inputs=rows, chunk_size=16)
    np.testing.assert_allclose(embeddings(third), expected, atol=1e-5)
    assert third.status().rows_reused == len(rows)


def test_a_chunk_whose_rows_all_hit_never_loads_the_model(reusing: Reusing, settings: Settings,
                                                          worker_factory: Callable[..., WorkerProcess],
                                                          st_cls: Path) -> None:
    # given rows stored by the module's worker
    rows = sentences(24, seed=17)
    expected = embeddings(reusing.client.submit(task="feature-extraction", model=str(st_cls), inputs=rows,
                                                chunk_size=8))
    # when a fresh worker on the same output root (and so the same cache) runs them again
    fresh = reusing.settings.model_copy(update={"queue": f"fresh-{time.monotonic_ns()}", "metrics_port": free_port()})
    worker = worker_factory(fresh)
    wait_serving(f"http://127.0.0.1:{fresh.metrics_port}/metrics", worker.proc, worker.log, "worker metrics", 30)
    with Client(fresh) as client:
        job = client.submit(task="feature-extraction", model=str(st_cls), inputs=rows, chunk_size=8)
        found = embeddings(job)
    # then it copied every row without loading the model, and the job still records what the model resolved to
    samples = scrape(f"http://127.0.0.1:{fresh.metrics_port}/metrics")
    assert total(samples, "hfq_model_loads_total") == 0
    assert job.status().rows_reused == len(rows)
    np.testing.assert_array_equal(found, expected)
    manifest = json.loads((job.output_dir / "manifest.json").read_text())
    assert manifest["resolved"]["pooling"] == "cls"
    worker.stop()


def test_an_openai_batch_file_run_again_reuses_its_rows(reusing: Reusing, st_cls: Path, causal_lm: Path,
                                                        tmp_path: Path) -> None:
    # given an OpenAI batch file of embeddings and greedy chat requests, run once
    lines = [{"custom_id": f"emb-{i}", "method": "POST", "url": "/v1/embeddings",
              "body": {"model": str(st_cls), "input": text}} for i, text in enumerate(sentences(4, seed=19))]
    lines.append({"custom_id": "chat", "method": "POST", "url": "/v1/chat/completions",
                  "body": {"model": str(causal_lm), "max_tokens": 4, "temperature": 0,
                           "messages": [{"role": "user", "content": "Say hello."}]}})
    path = tmp_path / "requests.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))

    def bodies(batch: object) -> dict[str, object]:
        out = [json.loads(line) for line in batch.output_file.read_text().splitlines()]  # type: ignore[attr-defined]
        return {line["custom_id"]: _content(line["response"]["body"]) for line in out}

    first = reusing.client.submit_openai_batch(path)
    first.wait(timeout=120, poll_interval=0.2)
    # when the same file runs again
    second = reusing.client.submit_openai_batch(path)
    second.wait(timeout=120, poll_interval=0.2)
    # then every request's rows were copied, and every answer equals the first run's
    assert sum(job.status().rows_reused for job in second.jobs()) == len(lines)
    assert bodies(second) == bodies(first)


def _content(body: dict) -> object:
    """What an OpenAI response body answers (not its ids and timestamps)."""
    if "data" in body:
        return [item["embedding"] for item in body["data"]]
    return [choice["message"]["content"] for choice in body["choices"]]


def test_a_resumed_job_reuses_rows_stored_before(reusing: Reusing, encoder: Path) -> None:
    # given rows embedded once, and a job over the same rows that never ran (queued where no worker serves), cancelled
    rows = sentences(20, seed=37)
    expected = embeddings(reusing.client.submit(task="feature-extraction", model=str(encoder), inputs=rows,
                                                chunk_size=8))
    with Client(reusing.settings.model_copy(update={"queue": f"idle-{time.monotonic_ns()}"})) as idle:
        stalled = idle.submit(task="feature-extraction", model=str(encoder), inputs=rows, chunk_size=8)
        stalled.cancel()
    # when it is resumed onto the module's worker
    ran = reusing.ran()
    resumed = reusing.client.resume(stalled.id)
    found = embeddings(resumed)
    # then its chunks took every row from the cache, none reached the model, and the vectors are the first run's
    assert resumed.status().rows_reused == len(rows)
    assert reusing.ran() == ran
    np.testing.assert_array_equal(found, expected)
