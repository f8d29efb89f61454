"""What operators see, against a real worker, a real Flower and real jobs: metrics, Flower's API, the CLI views.

One worker (its own queue and metrics port, serving the slow fault model so a job is still running
while a test looks at it) and one `hfq flower` serve the whole module.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from pydantic import SecretStr

from hfqueue import Client, Job, Settings
from hfqueue.state.broker import CHUNK_TASK
from hfqueue.state.embedded import free_port
from tests.browser import Browser, browser  # noqa: F401 - the fixture
from tests.conftest import WorkerProcess, settings_env, wait_for, wait_serving
from tests.dashboard import queried_metrics
from tests.fault_models import POISON, build_fault_encoder
from tests.integration.monitoring import Monitored, families, in_terminal, start_flower, total
from tests.tiny_models import sentences

pytestmark = pytest.mark.timeout(180)

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "hfqueue.json"
GPU_ONLY = {"hfq_gpu_memory_allocated_bytes", "hfq_gpu_memory_reserved_bytes", "hfq_gpu_memory_total_bytes"}


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fault encoder sleeping 0.1 s per batch: a 96-row job in batches of 4 runs about 2.5 s."""
    return build_fault_encoder(tmp_path_factory.mktemp("slow") / "model", delay_s=0.1)


@pytest.fixture(scope="module")
def monitored(settings: Settings, worker_factory: Callable[..., WorkerProcess],
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[Monitored]:
    """A worker with metrics on a free port and `hfq flower` (basic auth) on another."""
    mine = settings.model_copy(update={"queue": f"monitoring-{time.monotonic_ns()}", "metrics_port": free_port(),
                                       "metrics_address": "127.0.0.1", "allow_remote_code": True,
                                       "max_batch_size": 4, "flower_password": SecretStr("s3cret-for-tests")})
    worker = worker_factory(mine)
    # Ready means the worker answers a ping; its serving child starts the metrics endpoint a moment later.
    wait_serving(f"http://127.0.0.1:{mine.metrics_port}/metrics", worker.proc, worker.log, "worker metrics", 30)
    port = free_port()
    flower = start_flower(settings_env(mine), port, tmp_path_factory.mktemp("flower") / "flower.log")
    with Client(mine) as client:
        yield Monitored(mine, client, worker, worker.name, f"http://127.0.0.1:{port}", ("hfq", "s3cret-for-tests"))
    flower.terminate()
    flower.wait(30)


def slow_job(m: Monitored, model: Path, rows: int = 96, poison: int | None = None) -> Job:
    texts = sentences(rows)
    if poison is not None:
        texts[poison] = f"{texts[poison]} {POISON}"
    return m.client.submit(task="feature-extraction", model=str(model), inputs=texts, chunk_size=16,
                           trust_remote_code=True)


def test_metrics_move_by_the_rows_a_job_ran(monitored: Monitored, slow_model: Path) -> None:
    # given the worker's counters before a job (the model may be resident from an earlier test)
    m = monitored
    before = m.metrics()
    labels = {"task": "feature-extraction", "model": str(slow_model), "worker": m.worker_name}

    # when a 96-row job with one poison row runs, scraped while it runs and after it ends
    job = slow_job(m, slow_model, poison=5)
    wait_for(lambda: job.status().rows_done > 0, 60, "the first chunk")
    during = m.metrics()
    status = job.wait(timeout=120)
    # the last chunk is counted in Redis (which ends the job) a moment before its hooks run: let them
    after = wait_for(lambda: total(m.metrics(), "hfq_chunks_total", **labels, outcome="done")
                       - total(before, "hfq_chunks_total", **labels, outcome="done") == 6 and m.metrics(), 10,
                       "the last chunk's metrics")
    assert isinstance(after, dict)

    # then mid-job the row counter had moved part of the way, and by the end by exactly the job's rows
    def delta(samples: dict, name: str, **extra: str) -> float:
        return total(samples, name, **labels, **extra) - total(before, name, **labels, **extra)

    assert 0 < delta(during, "hfq_rows_total", outcome="ok") < 96 or status.elapsed < 1
    assert delta(after, "hfq_rows_total", outcome="ok") == status.rows_done == 95
    assert delta(after, "hfq_rows_total", outcome="failed") == status.rows_failed == 1
    assert delta(after, "hfq_errors_total", kind="row") == 1
    assert delta(after, "hfq_chunks_total", outcome="done") == 6
    # and batches, tokens and the batch histograms agree with each other
    batches = delta(after, "hfq_batches_total")
    assert batches >= 96 / 4 and delta(after, "hfq_batch_rows_count") == batches
    assert delta(after, "hfq_batch_rows_sum") == 95  # the poison row's own batch failed: not a pass
    assert 0 < delta(after, "hfq_tokens_total", kind="real") <= delta(after, "hfq_tokens_total", kind="padded")
    assert delta(after, "hfq_batch_seconds_sum") >= 0.1 * batches  # the model sleeps 0.1 s a pass
    assert delta(after, "hfq_queue_wait_seconds_count", route="chunk") == 6
    # and the model was loaded at most once, every other chunk found it resident
    assert delta(after, "hfq_model_loads_total") + delta(after, "hfq_model_cache_hits_total") >= 6
    assert total(after, "hfq_model_loads_total", **labels) == 1
    assert total(after, "hfq_models_resident", worker=m.worker_name) >= 1
    assert total(after, "process_resident_memory_bytes") > 0
    # and no series is labelled by job
    assert not any(dict(ls).get("job_id") or job.id in str(ls) for _, ls in after)


def test_a_bfloat16_batch_that_comes_out_nan_runs_again_in_float32_and_is_counted(
        monitored: Monitored, tmp_path: Path) -> None:
    # given a model whose hidden states overflow to NaN in bfloat16 (as some do), and its float32 outputs
    m = monitored
    model = build_fault_encoder(tmp_path / "nan-in-bf16", nan_reduced=True)
    texts = sentences(24)
    exact = m.client.submit(task="feature-extraction", model=str(model), inputs=texts, trust_remote_code=True)
    exact_vectors = np.array(exact.result(timeout=60)["embedding"])
    before = m.metrics()

    # when the same rows run as a job that asks for bfloat16
    job = m.client.submit(task="feature-extraction", model=str(model), inputs=texts, trust_remote_code=True,
                          dtype="bfloat16", chunk_size=12)
    vectors = np.array(job.result(timeout=60)["embedding"])

    # then every row has its float32 vector (no NaN written), and the job, its manifest and the metrics say so
    status = job.status()
    assert np.isfinite(vectors).all() and np.allclose(vectors, exact_vectors, atol=1e-5)
    assert (exact.status().dtype, status.dtype) == ("float32", "bfloat16")  # auto is float32 on a CPU
    assert status.exact_batches >= 2 and status.rows_failed == 0
    manifest = json.loads((job.output_dir / "manifest.json").read_text())
    assert (manifest["dtype"], manifest["exact_batches"]) == ("bfloat16", status.exact_batches)
    moved = wait_for(lambda: total(m.metrics(), "hfq_exact_fallbacks_total", model=str(model))
                     - total(before, "hfq_exact_fallbacks_total", model=str(model)), 10, "the fallback metric")
    assert moved == status.exact_batches


def test_flower_lists_the_worker_and_readable_chunk_tasks(monitored: Monitored, slow_model: Path) -> None:
    # given a job of 15 chunks (about 6 s of work), running
    m = monitored
    job = slow_job(m, slow_model, rows=240)
    wait_for(lambda: any(c.get("state") == "running" for c in job.chunks().values()), 30, "a running chunk")

    def chunk_tasks() -> list[dict]:
        return [t for t in m.flower(f"/api/tasks?taskname={CHUNK_TASK}").json().values()
                if f"job {job.id} " in (t["args"] or "")]

    # when Flower's API is asked, with the credentials, while the job runs and once it has ended
    assert m.worker_name in wait_for(lambda: m.flower("/api/workers?refresh=1").json(), 30, "workers")
    running = wait_for(lambda: len(chunk_tasks()) == 15 and chunk_tasks(), 30, "the job's 15 chunk tasks")
    job.wait(timeout=120)
    tasks = wait_for(lambda: all(t["state"] == "SUCCESS" for t in chunk_tasks()) and chunk_tasks(), 30,
                       "15 finished chunk tasks")

    # then mid-job Flower already listed every chunk, the first ones started or done and the rest queued
    assert isinstance(running, list) and {t["state"] for t in running} <= {"PENDING", "RECEIVED", "STARTED",
                                                                            "SUCCESS"}
    assert any(t["state"] == "PENDING" for t in running)
    # and each chunk task reads as job, chunk k of 15, rows, task and model, with a result summary
    assert isinstance(tasks, list) and len(tasks) == 15
    described = sorted(t["args"] for t in tasks)
    assert described[0] == f"job {job.id} · chunk 0 of 15 · rows 0-15 (16) · feature-extraction · {slow_model}"
    for t in tasks:
        assert t["worker"] == m.worker_name and t["runtime"] > 0 and t["kwargs"] == "{}"
        assert "'rows': 16" in t["result"] and "'rows_failed': 0" in t["result"] and "rows_per_second" in t["result"]
        assert "inputs" not in t["args"] and "s3cret" not in json.dumps(t)

    # and without credentials, or with wrong ones, the API, the pages and the metrics are refused
    for path in ("/api/workers", "/api/tasks", "/tasks", "/", "/metrics"):
        assert m.flower(path, auth=("hfq", "wrong")).status_code == 401, path
        assert requests.get(m.flower_url + path, timeout=10).status_code == 401, path
    # and Flower's own metrics (for the dashboard's task rates) are there with them
    assert "flower_events_total" in m.flower("/metrics").text


def test_every_metric_the_dashboard_charts_is_served(monitored: Monitored, slow_model: Path) -> None:
    # given the Grafana dashboard, and a worker and a Flower that have seen a job
    dashboard = json.loads(DASHBOARD.read_text())
    slow_job(monitored, slow_model, rows=8).wait(timeout=60)

    # when both endpoints are scraped
    served = families(f"http://127.0.0.1:{monitored.settings.metrics_port}/metrics")
    served |= families(monitored.flower_url + "/metrics", auth=monitored.auth)

    # then every metric a panel queries is served (GPU memory only on CUDA workers)
    assert queried_metrics(dashboard) - GPU_ONLY <= served, queried_metrics(dashboard) - GPU_ONLY - served


def test_hfq_status_is_live_on_a_terminal_and_plain_or_json_otherwise(monitored: Monitored, slow_model: Path) -> None:
    # given a running job
    env = settings_env(monitored.settings)
    job = slow_job(monitored, slow_model, rows=96, poison=70)
    wait_for(lambda: job.status().state.value == "running", 30, "the job to start")

    # when `hfq status` runs on a terminal
    code, screen = in_terminal(["status", job.id], env)

    # then it drew the running job with a bar, rows/s and ETA, and stayed until the job ended
    assert code == 0, screen
    assert f"job {job.id}: running" in screen and f"job {job.id}: completed_with_errors" in screen
    assert "━" in screen and "rows/s" in screen and "ETA" in screen
    assert "errors 1 rows" in screen and "chunks: 0 queued · 0 running · 6 done · 0 failed" in screen

    # and piped, it prints one plain snapshot; with --json, numbers a script can read
    plain = subprocess.run([sys.executable, "-m", "hfqueue", "status", job.id], env=env, capture_output=True,
                           text=True, timeout=60)
    assert plain.returncode == 0 and "\x1b[" not in plain.stdout
    assert "[##############################] 100%  96/96 rows" in plain.stdout
    data = json.loads(subprocess.run([sys.executable, "-m", "hfqueue", "status", job.id, "--json"], env=env,
                                     capture_output=True, text=True, timeout=60).stdout)
    assert data["chunk_counts"] == {"queued": 0, "running": 0, "done": 6, "failed": 0}
    assert data["rows_failed"] == 1 and data["rows_done"] == 95 and data["state"] == "completed_with_errors"


def test_hfq_status_json_mid_job_counts_running_and_queued_chunks(monitored: Monitored, slow_model: Path) -> None:
    # given a job of 15 chunks (about 6 s of work), one running on the worker
    job = slow_job(monitored, slow_model, rows=240)
    wait_for(lambda: any(c.get("state") == "running" for c in job.chunks().values()), 30, "a running chunk")

    # when `hfq status --json` is asked while it runs
    data = json.loads(subprocess.run([sys.executable, "-m", "hfqueue", "status", job.id, "--json"],
                                     env=settings_env(monitored.settings), capture_output=True, text=True,
                                     timeout=60).stdout)

    # then the chunk counts add up, at most one chunk runs (on the worker), and some still wait
    counts = data["chunk_counts"]
    assert sum(counts.values()) == 15 and counts["running"] <= 1 and counts["queued"] >= 1, counts
    assert data["running_on"] in ([], [monitored.worker_name]) and data["state"] == "running"
    assert data["eta_seconds"] is None or data["eta_seconds"] > 0
    job.cancel()


def test_hfq_jobs_and_workers_on_a_terminal_and_as_json(monitored: Monitored, slow_model: Path) -> None:
    # given a finished job on a worker that has loaded the slow model
    env = settings_env(monitored.settings)
    job = slow_job(monitored, slow_model, rows=8)
    job.wait(timeout=60)

    # when `hfq jobs` and `hfq workers` run on a terminal and with --json
    jobs_code, jobs_screen = in_terminal(["jobs", "--limit", "5"], env)
    workers_code, workers_screen = in_terminal(["workers"], env)
    jobs = json.loads(subprocess.run([sys.executable, "-m", "hfqueue", "jobs", "--json"], env=env,
                                     capture_output=True, text=True, timeout=60).stdout)
    workers = json.loads(subprocess.run([sys.executable, "-m", "hfqueue", "workers", "--json"], env=env,
                                        capture_output=True, text=True, timeout=60).stdout)

    # then the tables name the job and the worker with its device, model and memory
    assert jobs_code == workers_code == 0
    assert job.id in jobs_screen and "completed" in jobs_screen and "ROWS/S" in jobs_screen
    assert monitored.worker_name in workers_screen and "cpu" in workers_screen and "MiB RSS" in workers_screen
    assert "(feature-extraction)" in workers_screen  # each resident model is shown with its task
    # and the JSON says the same, for scripts
    assert jobs[0]["job_id"] == job.id and jobs[0]["rows_done"] == 8
    mine = next(w for w in workers if w["name"] == monitored.worker_name)
    assert mine["device"] == "cpu" and mine["rss_bytes"] > 50 * 2**20 and mine["gpu"] == []
    assert any(m_["model"] == str(slow_model) and m_["task"] == "feature-extraction" for m_ in mine["models"])
    assert mine["metrics_url"] == f"http://127.0.0.1:{monitored.settings.metrics_port}/metrics"


def test_a_worker_gone_leaves_hfq_workers(settings: Settings, worker_factory: Callable[..., WorkerProcess]) -> None:
    # given a second worker on its own queue, listed as live
    other = settings.model_copy(update={"queue": f"gone-{time.monotonic_ns()}"})
    worker = worker_factory(other)
    with Client(other) as client:
        name = worker.name
        wait_for(lambda: name in [w.name for w in client.live_workers()], 30, "the worker's record")

        # when it stops, then it leaves the list within the record's lifetime
        worker.stop()
        wait_for(lambda: name not in [w.name for w in client.live_workers()], 30, "the record to expire")


def test_flower_pages_in_a_real_browser(monitored: Monitored, slow_model: Path, browser: Browser,  # noqa: F811
                                        tmp_path: Path) -> None:
    # given a job running on the worker
    job = slow_job(monitored, slow_model)
    wait_for(lambda: any(c.get("state") == "running" for c in job.chunks().values()), 30, "a running chunk")

    # when headless Chromium, with the credentials, loads Flower's workers page, then its tasks page
    browser.open(monitored.flower_url + "/workers", auth=monitored.auth)
    browser.wait_for_text(monitored.worker_name, timeout=30)
    browser.screenshot(tmp_path / "flower-workers.png")
    browser.open(monitored.flower_url + "/tasks", auth=monitored.auth)
    browser.wait_for_text(f"job {job.id} · chunk", timeout=30)
    shot = browser.screenshot(tmp_path / "flower-tasks.png")

    # then the rendered pages name the worker and the job's chunk tasks by what they are
    page = browser.text()
    assert CHUNK_TASK in page and monitored.worker_name in page
    assert re.search(rf"job {job.id} · chunk \d of 6", page), page
    assert shot.stat().st_size > 10_000
    job.wait(timeout=120)


def test_hfq_flower_generates_its_password_once_and_never_opens_its_api(settings: Settings, tmp_path: Path) -> None:
    # given no password in the settings, a fresh state folder, and Flower's own "open API" switch set
    env = {**settings_env(settings.model_copy(update={"state_dir": tmp_path / "state"})),
           "FLOWER_UNAUTHENTICATED_API": "true"}
    port = free_port()

    # when `hfq flower` starts twice in a row
    first = start_flower(env, port, tmp_path / "first.log")
    password = (tmp_path / "state" / "flower-password").read_text().strip()
    refused = requests.get(f"http://127.0.0.1:{port}/api/workers", timeout=10).status_code
    allowed = requests.get(f"http://127.0.0.1:{port}/api/workers", auth=("hfq", password), timeout=10).status_code
    first.terminate()
    first.wait(30)
    second = start_flower(env, port, tmp_path / "second.log")
    second.terminate()
    second.wait(30)

    # then the first printed the generated password, kept readable by its owner only; the second did not
    assert f"password {password!r} (generated" in (tmp_path / "first.log").read_text()
    assert password not in (tmp_path / "second.log").read_text()
    assert (tmp_path / "state" / "flower-password").stat().st_mode & 0o777 == 0o600
    # and the API was refused without the password despite the switch
    assert (refused, allowed) == (401, 200)
    assert "ignoring FLOWER_UNAUTHENTICATED_API" in (tmp_path / "first.log").read_text()


def test_hfq_flower_without_auth_only_on_loopback(settings: Settings, tmp_path: Path) -> None:
    # given the settings, when Flower is asked for no authentication on every interface
    env = settings_env(settings.model_copy(update={"state_dir": tmp_path / "state"}))
    done = subprocess.run([sys.executable, "-m", "hfqueue", "flower", "--address", "0.0.0.0", "--no-auth"], env=env,
                          capture_output=True, text=True, timeout=60)

    # then it refuses, saying what to do
    assert done.returncode == 2 and "may listen on loopback only" in done.stderr

    # and on loopback it serves the pages, but its API stays closed (Flower opens it only with auth)
    port = free_port()
    flower = start_flower(env, port, tmp_path / "flower.log", "--no-auth")
    try:
        assert requests.get(f"http://127.0.0.1:{port}/workers", timeout=10).status_code == 200
        assert requests.get(f"http://127.0.0.1:{port}/api/workers", timeout=10).status_code == 401
    finally:
        flower.terminate()
        flower.wait(30)
