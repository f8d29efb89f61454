"""PEFT adapters and device maps end to end: real worker processes, tiny real models, LoRA adapters built with peft.

A job with an adapter gives what the base model with the adapter merged into its weights gives, run directly;
jobs for two adapters and for none interleave on one worker (chunk queue and request lane at once), which loads
the base model once; bad adapters are refused at submit, or fail their job with the reason and leave the base as
it was; a worker that loads through accelerate's device map gives the plain worker's outputs and lists its devices.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers

from hfqueue import Client, Settings
from hfqueue.errors import HfqError, InvalidSpecError, JobFailedError, SourceNotFoundError
from hfqueue.state.embedded import free_port
from tests.adapter_models import build_lora, merged
from tests.conftest import WorkerProcess, settings_env, wait_for
from tests.integration.monitoring import scrape, total
from tests.task_models import build_causal_lm

pytestmark = pytest.mark.timeout(120)

GREEDY = {"max_new_tokens": 8}
SMALL_JOB_ROWS = 8  # jobs of at most this many rows ride the request lane, bigger ones the chunk queue


@pytest.fixture(scope="module")
def loras(causal_lm: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two LoRA adapters of the tiny causal LM, drawn under different seeds."""
    root = tmp_path_factory.mktemp("loras")
    return {name: build_lora(causal_lm, root / f"lora-{name}", seed=seed) for name, seed in (("a", 1), ("b", 2))}


@pytest.fixture(scope="module")
def served(settings: Settings, worker_factory: Callable[..., WorkerProcess]) -> Iterator[tuple[Settings, Client]]:
    """A worker of its own, serving metrics, and a client whose jobs of more than 8 rows go to the chunk queue. Its
    model cache holds every base model of this module, so none is evicted and loaded again whatever the test order."""
    mine = settings.model_copy(update={"queue": f"adapters-{time.monotonic_ns()}", "metrics_port": free_port(),
                                       "metrics_address": "127.0.0.1", "small_job_rows": SMALL_JOB_ROWS,
                                       "model_cache_size": 8})
    worker_factory(mine)
    with Client(mine) as client:
        yield mine, client


@pytest.fixture(scope="module")
def prompts(texts: list[str]) -> list[str]:
    """Prompts of varied length."""
    return [t[:60] for t in texts]


_expected: dict[tuple[str, str | None, tuple[str, ...]], list[str]] = {}


def expected(base: Path, adapter: Path | None, prompts: list[str]) -> list[str]:
    """Greedy continuations from the base model, or the base with ``adapter`` merged in, one prompt at a time."""
    key = (str(base), None if adapter is None else str(adapter), tuple(prompts))
    if key not in _expected:
        tok = transformers.AutoTokenizer.from_pretrained(base)
        model = (transformers.AutoModelForCausalLM.from_pretrained(base).eval() if adapter is None
                 else merged(base, adapter))
        texts = []
        with torch.inference_mode():
            for prompt in prompts:
                enc = tok(prompt, return_tensors="pt")
                ids = model.generate(**enc, pad_token_id=tok.pad_token_id, **GREEDY)[0]
                texts.append(tok.decode(ids[enc["input_ids"].shape[1]:], skip_special_tokens=True))
        _expected[key] = texts
    return _expected[key]


def generation(client: Client, model: Path, adapter: Path | None, rows: list[str]) -> Any:
    return client.submit(task="text-generation", model=str(model), adapter=None if adapter is None else str(adapter),
                         inputs=rows, options=GREEDY)


def test_a_job_with_an_adapter_equals_the_merged_model(served: tuple[Settings, Client], causal_lm: Path,
                                                       loras: dict[str, Path], prompts: list[str]) -> None:
    # given a LoRA adapter of the tiny causal LM whose weights change its outputs
    _, client = served
    rows = prompts[:12]

    # when a text-generation job names the adapter
    job = generation(client, causal_lm, loras["a"], rows)
    ds = job.result(timeout=90)

    # then every continuation equals greedy generation on the merged model, and differs from the base's
    assert ds["generated_text"] == expected(causal_lm, loras["a"], rows)
    assert ds["generated_text"] != expected(causal_lm, None, rows)
    # and the manifest records the adapter with the rest of the spec
    manifest = json.loads((Path(job.output_dir) / "manifest.json").read_text())
    assert manifest["spec"]["adapter"] == str(loras["a"])


def test_hfq_submit_takes_an_adapter(served: tuple[Settings, Client], causal_lm: Path, loras: dict[str, Path],
                                     prompts: list[str]) -> None:
    # given the tiny causal LM and adapter B
    settings, client = served
    rows = prompts[:3]

    # when `hfq submit --adapter` sends a job
    args = ["submit", "--task", "text-generation", "--model", str(causal_lm), "--adapter", str(loras["b"]),
            "--option", "max_new_tokens=8", "--json", *(a for row in rows for a in ("--input", row))]
    out = subprocess.run([sys.executable, "-m", "hfqueue", *args], env=settings_env(settings), capture_output=True,
                         text=True, timeout=60, check=True).stdout

    # then the job ran with the adapter
    job = client.job(json.loads(out)["job_id"])
    assert job.result(timeout=90)["generated_text"] == expected(causal_lm, loras["b"], rows)


def test_two_adapters_and_none_interleave_on_a_base_loaded_once(served: tuple[Settings, Client], causal_lm: Path,
                                                                loras: dict[str, Path], prompts: list[str]) -> None:
    # given big jobs (chunk queue, 3 chunks each) for adapter A, adapter B and no adapter, then small ones (request
    # lane) for the same three, all submitted before any is waited for
    settings, client = served
    wanted = {"a": loras["a"], "b": loras["b"], "base": None}
    big, small = prompts[:40], prompts[40:46]
    jobs = [(rows, adapter, generation(client, causal_lm, adapter, rows))
            for rows in (big, small) for adapter in wanted.values()]

    # when they run: the chunk thread and the request-lane thread take turns on the one resident base model
    results = [(rows, adapter, job.result(timeout=90)["generated_text"], job.status()) for rows, adapter, job in jobs]

    # then each job's rows equal its own model run directly
    for rows, adapter, texts, _ in results:
        assert texts == expected(causal_lm, adapter, rows), f"adapter {adapter}"
    # and lane jobs ran while chunk jobs were running (they interleaved, not one after the other)
    statuses = [status for rows, _, _, status in results]
    assert min(s.finished_at or 0 for s in statuses[3:]) < max(s.finished_at or 0 for s in statuses[:3])
    # and the worker loaded the base model once, and holds it with both adapters applied
    samples = scrape(f"http://127.0.0.1:{settings.metrics_port}/metrics")
    assert total(samples, "hfq_model_loads_total", task="text-generation", model=str(causal_lm)) == 1

    def held() -> list[str] | None:
        worker = next(w for w in client.live_workers() if w.queue == settings.queue)
        model = next((m for m in worker.models if m["model"] == str(causal_lm)), None)  # None: no beat since
        return sorted(model["adapters"]) if model is not None and len(model["adapters"]) == 2 else None

    assert wait_for(held, 10, "the worker's record of its adapters") == sorted(str(p) for p in loras.values())


def test_an_adapter_folder_rewritten_in_place_is_applied_again(served: tuple[Settings, Client], causal_lm: Path,
                                                               loras: dict[str, Path], prompts: list[str],
                                                               tmp_path: Path) -> None:
    # given a folder holding adapter A, applied by a job (the worker keeps it applied to the resident base)
    _, client = served
    folder = Path(shutil.copytree(loras["a"], tmp_path / "lora"))
    rows = prompts[:12]
    assert generation(client, causal_lm, folder, rows).result(timeout=90)["generated_text"] == \
        expected(causal_lm, loras["a"], rows)
    # when adapter B is saved into the same folder and the same rows run again
    shutil.rmtree(folder)
    shutil.copytree(loras["b"], folder)
    texts = generation(client, causal_lm, folder, rows).result(timeout=90)["generated_text"]
    # then the job ran adapter B, not the A still applied under that name
    assert texts == expected(causal_lm, loras["b"], rows)
    assert expected(causal_lm, loras["a"], rows) != expected(causal_lm, loras["b"], rows)


@pytest.mark.parametrize(("task", "fixture", "auto_class"), [
    ("text-classification", "classifier", "AutoModelForSequenceClassification"),
    ("feature-extraction", "encoder", "AutoModel"),
    ("fill-mask", "masked_lm", "AutoModelForMaskedLM"),
])
def test_other_tasks_run_their_adapters(served: tuple[Settings, Client], request: pytest.FixtureRequest,
                                        tmp_path: Path, texts: list[str], task: str, fixture: str,
                                        auto_class: str) -> None:
    # given a LoRA adapter of a tiny BERT with the task's head (the classifier's adapter also retrains its head)
    _, client = served
    base: Path = request.getfixturevalue(fixture)
    adapter = build_lora(base, tmp_path / "lora", seed=3, auto_class=auto_class,
                         classifier=task == "text-classification")
    rows = [t.replace(" ", " [MASK] ", 1) for t in texts[:10]] if task == "fill-mask" else texts[:10]

    # when jobs with the adapter and without it run (a forward-pass task, a pooled one, a pipeline-backed one)
    with_adapter = client.submit(task=task, model=str(base), adapter=str(adapter), inputs=rows, chunk_size=4)
    plain = client.submit(task=task, model=str(base), inputs=rows, chunk_size=4)

    # then each equals its own model run directly, and the adapter changed the outputs
    got_adapter, got_plain = (j.result(timeout=90).to_list() for j in (with_adapter, plain))
    model_adapter = merged(base, adapter, auto_class)
    model_plain = getattr(transformers, auto_class).from_pretrained(base).eval()
    tok = transformers.AutoTokenizer.from_pretrained(base)
    for got, model in ((got_adapter, model_adapter), (got_plain, model_plain)):
        assert_outputs(task, got, direct(task, model, tok, rows))
    assert summary(task, got_adapter) != summary(task, got_plain)


def direct(task: str, model: Any, tok: Any, rows: list[str]) -> list[dict[str, Any]]:
    """The task's outputs for each row alone, from ``model`` directly (a pipeline, or pooling by hand)."""
    if task == "feature-extraction":
        out = []
        with torch.inference_mode():
            for row in rows:
                hidden = model(**tok(row, return_tensors="pt")).last_hidden_state[0]
                out.append({"embedding": hidden.mean(0).numpy()})
        return out
    pipe = transformers.pipeline(task, model=model, tokenizer=tok)
    if task == "fill-mask":
        return [{"predictions": pipe(row, top_k=5)} for row in rows]
    return [pipe(row, top_k=1)[0] for row in rows]


def assert_outputs(task: str, got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    # 1e-4: adapter layers added to a layer's output round differently from the same adapter merged into its weights
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        if task == "feature-extraction":
            np.testing.assert_allclose(g["embedding"], w["embedding"], atol=1e-4)
        elif task == "fill-mask":
            assert [p["token"] for p in g["predictions"]] == [p["token"] for p in w["predictions"]]
        else:
            assert g["label"] == w["label"] and g["score"] == pytest.approx(w["score"], abs=1e-4)


def summary(task: str, rows: list[dict[str, Any]]) -> Any:
    if task == "feature-extraction":
        return [np.round(r["embedding"], 4).tolist() for r in rows]
    if task == "fill-mask":
        return [[p["token"] for p in r["predictions"]] for r in rows]
    return [(r["label"], round(r["score"], 4)) for r in rows]


def test_bad_adapter_paths_are_refused_at_submit(served: tuple[Settings, Client], causal_lm: Path,
                                                 loras: dict[str, Path], tmp_path: Path, texts: list[str]) -> None:
    # given an adapter copied outside the input roots, a path that does not exist, a model folder that is no
    # adapter, and a name that is no Hub id
    _, client = served
    outside = Path(tempfile.mkdtemp(prefix="hfq-outside-"))
    try:
        shutil.copytree(loras["a"], outside / "lora")
        cases = {str(outside / "lora"): (InvalidSpecError, "outside the input roots"),
                 str(tmp_path / "missing"): (SourceNotFoundError, "does not exist"),
                 str(causal_lm): (SourceNotFoundError, "no adapter_config.json"),
                 "not a hub id!": (InvalidSpecError, "neither a local folder nor a Hub adapter id")}
        before = {s.job_id for s in client.jobs(limit=10_000)}

        # when jobs name them, then each is refused at submit with the reason
        for adapter, (error, reason) in cases.items():
            with pytest.raises(error, match=reason):
                client.submit(task="text-generation", model=str(causal_lm), adapter=adapter, inputs=texts[:2])
    finally:
        shutil.rmtree(outside)
    # and nothing was recorded or enqueued
    assert {s.job_id for s in client.jobs(limit=10_000)} == before


def test_the_worker_refuses_an_adapter_outside_its_roots(served: tuple[Settings, Client], causal_lm: Path,
                                                         loras: dict[str, Path], texts: list[str]) -> None:
    # given an adapter outside the input roots, named by a client.infer request (which no planner checks)
    _, client = served
    outside = Path(tempfile.mkdtemp(prefix="hfq-outside-"))
    try:
        shutil.copytree(loras["a"], outside / "lora")

        # when the request reaches the worker, then the worker refuses it, naming the adapter folder
        with pytest.raises(HfqError, match=r"this worker refuses the adapter: adapter folder .* outside the input"):
            client.infer("text-generation", texts[:1], model=str(causal_lm), adapter=str(outside / "lora"),
                         options=GREEDY, timeout=60)
    finally:
        shutil.rmtree(outside)


def test_an_adapter_made_for_another_base_fails_its_job_naming_both(served: tuple[Settings, Client],
                                                                    causal_lm: Path, tmp_path: Path,
                                                                    texts: list[str]) -> None:
    # given an adapter made for another model of the same shape (another folder)
    _, client = served
    other = build_causal_lm(tmp_path / "other-lm")
    adapter = build_lora(other, tmp_path / "lora-of-other", seed=4)

    # when a job runs it on the tiny causal LM
    job = client.submit(task="text-generation", model=str(causal_lm), adapter=str(adapter), inputs=texts[:4],
                        options=GREEDY)

    # then the job fails, and the reason names both base models
    with pytest.raises(JobFailedError):
        job.wait(timeout=60)
    error = job.status().error or ""
    assert f"made for base model {str(other)!r}" in error and f"this job's model is {str(causal_lm)!r}" in error


def test_an_adapter_that_does_not_fit_leaves_the_base_as_it_was(served: tuple[Settings, Client], causal_lm: Path,
                                                                loras: dict[str, Path], tmp_path: Path,
                                                                prompts: list[str]) -> None:
    # given an adapter whose config names no base, made for a wider model: its weights have the wrong shapes
    _, client = served
    wide = tmp_path / "wide-lm"
    shutil.copytree(causal_lm, wide)
    config = transformers.AutoConfig.from_pretrained(causal_lm)
    config.n_embd = 48
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(wide)
    adapter = build_lora(wide, tmp_path / "lora-wide", seed=5, base_name=None)

    # when a job runs it on the tiny causal LM, then jobs without an adapter and with adapter A
    failing = generation(client, causal_lm, adapter, prompts[:4])
    with pytest.raises(JobFailedError):
        failing.wait(timeout=60)
    plain, with_a = (generation(client, causal_lm, a, prompts[:6]) for a in (None, loras["a"]))

    # then the first fails saying why, and the others are untouched by its half-loaded layers
    assert "size mismatch" in (failing.status().error or "")
    assert plain.result(timeout=90)["generated_text"] == expected(causal_lm, None, prompts[:6])
    assert with_a.result(timeout=90)["generated_text"] == expected(causal_lm, loras["a"], prompts[:6])


@pytest.fixture(scope="module")
def device_mapped(settings: Settings,
                  worker_factory: Callable[..., WorkerProcess]) -> Iterator[tuple[Settings, Client]]:
    """A worker that loads every model through accelerate's device map, within 2 GiB of CPU memory."""
    mine = settings.model_copy(update={"queue": f"devmap-{time.monotonic_ns()}"})
    worker_factory(mine, env={"HFQ_DEVICE_MAP": "auto", "HFQ_MAX_MEMORY": '{"cpu": "2GiB"}'})
    with Client(mine) as client:
        yield mine, client


def test_a_device_map_worker_gives_the_plain_workers_outputs(device_mapped: tuple[Settings, Client],
                                                             causal_lm: Path, loras: dict[str, Path],
                                                             prompts: list[str]) -> None:
    # given a worker started with HFQ_DEVICE_MAP=auto and HFQ_MAX_MEMORY={"cpu": "2GiB"}
    settings, client = device_mapped
    rows = prompts[:12]

    # when jobs run on it without an adapter and with one
    plain, with_a = (generation(client, causal_lm, adapter, rows) for adapter in (None, loras["a"]))

    # then their outputs equal the models run directly (what the plain worker gives, tested above)
    assert plain.result(timeout=90)["generated_text"] == expected(causal_lm, None, rows)
    assert with_a.result(timeout=90)["generated_text"] == expected(causal_lm, loras["a"], rows)
    # and `hfq workers --json` lists the devices the worker's models lie on (its record is refreshed every 2 s)
    def listed() -> dict[str, Any] | None:
        out = subprocess.run([sys.executable, "-m", "hfqueue", "workers", "--json"], env=settings_env(settings),
                             capture_output=True, text=True, timeout=60, check=True).stdout
        worker = next(w for w in json.loads(out) if w["queue"] == settings.queue)
        return worker if worker["models"] and worker["models"][0]["adapters"] else None

    worker = wait_for(listed, 20, "the worker's record of its model and adapter", every=1)
    assert isinstance(worker, dict) and worker["devices"] == ["cpu"]
    assert [(m["model"], m["devices"], m["adapters"]) for m in worker["models"]] == \
        [(str(causal_lm), ["cpu"], [str(loras["a"])])]


def test_gpus_with_a_device_map_is_refused(settings: Settings) -> None:
    # given HFQ_DEVICE_MAP=auto in the environment
    env = {**settings_env(settings), "HFQ_DEVICE_MAP": "auto"}

    # when `hfq worker --gpus 0,1` starts, then it exits 2 at once saying to use one or the other
    started = subprocess.run([sys.executable, "-m", "hfqueue", "worker", "--gpus", "0,1"], env=env,
                             capture_output=True, text=True, timeout=60)
    assert started.returncode == 2
    assert "HFQ_DEVICE_MAP=auto" in started.stderr and "use one or the other" in started.stderr
