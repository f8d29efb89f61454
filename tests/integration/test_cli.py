"""The `hfq` command as a user runs it: separate processes, settings from the environment."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

from hfqueue import Client, JobSpec
from tests.conftest import settings_env

pytestmark = pytest.mark.timeout(120)


def hfq(*args: str, env: dict[str, str], timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """Run `hfq ARGS...` in a child process."""
    return subprocess.run([sys.executable, "-m", "hfqueue", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_submit_wait_status_cancel(worker, settings, classifier: Path, texts: list[str], tmp_path: Path) -> None:
    # given a text file with one input per line
    inputs = tmp_path / "inputs.txt"
    inputs.write_text("\n".join(texts[:12]) + "\n")
    env = settings_env(settings)

    # when it is submitted with `hfq submit`, then awaited with `hfq wait`
    submitted = hfq("submit", "--task", "text-classification", "--model", str(classifier),
                    "--inputs-file", str(inputs), "--json", env=env)
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["job_id"]
    waited = hfq("wait", job_id, "--timeout", "60", "--json", env=env)

    # then the job completed with every row, and the text views say so
    assert waited.returncode == 0, waited.stderr
    assert json.loads(waited.stdout)["rows_done"] == 12
    shown = hfq("status", job_id, env=env)
    assert f"job {job_id}: completed" in shown.stdout and "100%  12/12 rows" in shown.stdout
    assert "errors 0 rows" in shown.stdout and "chunks: 0 queued · 0 running · 1 done · 0 failed" in shown.stdout
    assert job_id in hfq("jobs", env=env).stdout
    # and cancelling a finished job changes nothing
    cancelled = hfq("cancel", job_id, "--json", env=env)
    assert json.loads(cancelled.stdout)["state"] == "completed"


def test_wait_timeout_exit_code(settings, encoder: Path) -> None:
    # given a job on a queue no worker serves
    env = {**settings_env(settings), "HFQ_QUEUE": "nobody-serves-this"}
    job_id = hfq("submit", "--task", "feature-extraction", "--model", str(encoder), "--input", "x", env=env).stdout.strip()

    # when `hfq wait` is given one second, then it exits 124 and says the job goes on
    waited = hfq("wait", job_id, "--timeout", "1", env=env)
    assert waited.returncode == 124 and "still queued" in waited.stderr
    assert hfq("cancel", job_id, env=env).returncode == 0


def test_worker_refuses_inconsistent_settings(settings) -> None:
    # given a visibility timeout shorter than the chunk time limit
    env = {**settings_env(settings), "HFQ_VISIBILITY_TIMEOUT": "600", "HFQ_CHUNK_TIME_LIMIT": "900",
           "HFQ_CHUNK_SOFT_TIME_LIMIT": "800"}

    # when a worker starts, then it stops at once and says what to change
    proc = hfq("worker", env=env, timeout=60)
    assert proc.returncode == 2
    assert "HFQ_VISIBILITY_TIMEOUT (600 s) must exceed HFQ_CHUNK_TIME_LIMIT (900 s)" in proc.stderr


def test_embedded_redis_is_started_once_and_reused_until_down(tmp_path: Path) -> None:
    # given no broker URL, only a state folder
    env = settings_env_without_broker(tmp_path)

    # when two commands run one after the other
    first = hfq("jobs", "--json", env=env)
    state = json.loads((tmp_path / "state" / "redis" / "server.json").read_text())
    second = hfq("jobs", "--json", env=env)

    # then both used the same private redis-server, which `hfq down` stops
    assert first.returncode == second.returncode == 0 and json.loads(second.stdout) == []
    assert json.loads((tmp_path / "state" / "redis" / "server.json").read_text()) == state
    assert "stopped the embedded redis-server" in hfq("down", env=env).stdout
    assert not (tmp_path / "state" / "redis" / "server.json").exists()


def settings_env_without_broker(tmp_path: Path) -> dict[str, str]:
    """An environment with a fresh state folder and no HFQ_BROKER_URL."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("HFQ_")}
    return {**env, "HFQ_STATE_DIR": str(tmp_path / "state"), "HFQ_OUTPUT_ROOT": str(tmp_path / "results")}


def test_submit_a_jobspec_over_a_folder_of_data_files(client: Client, encoder: Path, texts: list[str],
                                                      tmp_path: Path) -> None:
    # given a folder holding two jsonl files (read through datasets.load_dataset(folder))
    folder = tmp_path / "shards"
    folder.mkdir()
    datasets.Dataset.from_dict({"text": texts[:20]}).to_json(str(folder / "a.jsonl"))
    datasets.Dataset.from_dict({"text": texts[20:30]}).to_json(str(folder / "b.jsonl"))

    # when a JobSpec built on its own is submitted
    spec = JobSpec(task="feature-extraction", model=str(encoder), dataset=str(folder), chunk_size=7)
    result = client.submit(spec).result(timeout=90)

    # then all 30 rows come back, in the folder's order
    assert result["text"] == texts[:30] and result["row_idx"] == list(range(30))


def test_run_question_answering_from_a_jsonl_inputs_file(worker, settings, qa_model: Path, texts: list[str],
                                                        tmp_path: Path) -> None:
    # given a .jsonl file of question/context rows
    rows = [{"question": f"What is said in part {i}?", "context": texts[i]} for i in range(5)]
    inputs = tmp_path / "rows.jsonl"
    inputs.write_text("".join(json.dumps(r) + "\n" for r in rows))

    # when `hfq run` runs question-answering over it
    done = hfq("run", "--task", "question-answering", "--model", str(qa_model), "--inputs-file", str(inputs),
               "--option", "max_answer_len=5", "--output-dir", "qa-cli", "--json", env=settings_env(settings))

    # then it exits 0 and every answer is a span of its own context
    assert done.returncode == 0, done.stderr
    ds = datasets.load_dataset("parquet", data_files=str(settings.output_root / "qa-cli" / "*.parquet"),
                               split="train")
    assert ds["question"] == [r["question"] for r in rows]
    assert all(r["answer"] == r["context"][r["start"]:r["end"]] and r["answer"] for r in ds)


def test_a_bad_jsonl_line_is_named(settings, tmp_path: Path) -> None:
    # given a .jsonl inputs file whose second line is not JSON
    inputs = tmp_path / "rows.jsonl"
    inputs.write_text('{"question": "q", "context": "c"}\n{not json\n')

    # when it is submitted, then the command exits 2 naming the file and line
    done = hfq("submit", "--task", "question-answering", "--inputs-file", str(inputs), env=settings_env(settings))
    assert done.returncode == 2 and "rows.jsonl line 2 is not JSON" in done.stderr
