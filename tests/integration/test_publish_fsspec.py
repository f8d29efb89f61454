"""Publishing results to an fsspec URL (here a local folder), and the outputs refused at submit."""

from __future__ import annotations

import shutil
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest
import yaml

from hfqueue import Client, InvalidSpecError, JobState, Settings
from hfqueue.state.keys import Keys
from tests.conftest import WorkerProcess

pytestmark = pytest.mark.timeout(120)


def card_header(readme: Path) -> dict:
    """The YAML header of a dataset card."""
    _, header, _ = readme.read_text().split("---", 2)
    return yaml.safe_load(header)


def test_results_are_copied_to_a_local_url_in_the_hub_layout(client: Client, settings: Settings, encoder: Path,
                                                              texts: list[str], worker: WorkerProcess) -> None:
    # given a 45-row job (5 chunks) whose output is a folder under the output root, shards of about one part
    target = settings.output_root.resolve() / "exports" / "run-fsspec"
    job = client.submit(task="feature-extraction", model=str(encoder), inputs=texts[:45], chunk_size=9,
                        output=f"file://{target}")

    # when it finishes
    status = job.wait(timeout=90)

    # then the destination holds the results in data/, a card naming both, and the same rows as job.result()
    assert status.state == JobState.COMPLETED
    shards = sorted((target / "data").glob("train-*-of-*.parquet"))
    assert shards, f"no shards under {target}"
    assert all(p.name.endswith(f"-of-{len(shards):05d}.parquet") for p in shards)
    published = datasets.load_dataset("parquet", data_files=[str(p) for p in shards], split="train")
    assert published["row_idx"] == list(range(45))
    assert published["embedding"] == job.result()["embedding"]
    header = card_header(target / "README.md")
    assert header["configs"][0]["data_files"][0]["path"] == "data/train-*"
    card = (target / "README.md").read_text()
    assert "feature-extraction" in card and str(encoder) in card and "45 in, 45 results, 0 errors" in card
    manifest = job.output_dir / "manifest.json"
    assert '"published"' in manifest.read_text()


def test_a_rerun_copies_only_the_missing_shards(client: Client, settings: Settings, encoder: Path,
                                                texts: list[str], worker: WorkerProcess) -> None:
    # given a finished job published as several small shards, one of which is then lost at the destination
    from hfqueue.sinks.publish import publish

    target = settings.output_root.resolve() / "exports" / "run-rerun"
    job = client.submit(task="feature-extraction", model=str(encoder), inputs=texts[:40], chunk_size=10,
                        output=str(target))
    job.wait(timeout=90)
    shutil.rmtree(target)
    shutil.rmtree(job.output_dir / ".publish")  # built again below, cut one chunk part per shard
    small = settings.model_copy(update={"hub_shard_mb": 0.000001})
    assert publish(job.output_dir, small)["sent"] == 4
    shards = sorted((target / "data").glob("*.parquet"))
    lost = shards[-1]
    before = {p: p.stat().st_mtime_ns for p in shards}
    lost.unlink()

    # when the results are published again (as `hfq resume` does after an interrupted upload)
    report = publish(job.output_dir, small)

    # then only the lost shard is sent; the others are kept as they were
    assert report["sent"] == 1 and report["kept"] == len(shards) - 1
    assert lost.exists() and pq.read_metadata(lost).num_rows > 0
    assert all(p.stat().st_mtime_ns == before[p] for p in shards if p != lost)


@pytest.mark.parametrize(("output", "says"), [
    ("hub://just-a-name", "hub://<namespace>/<name>"),
    ("hub://user:hf_secret@org/name", "no token or password in the URL"),
    ("s3://AKIA:secret@bucket/x", "carries credentials"),
    ("s3://bucket/x?token=abc", "carries credentials"),
    ("nosuchproto://x/y", "fsspec knows no protocol"),
    ("/etc/hfq-outside", "outside the output root"),
    ("memory://x", "is not allowed here"),
])
def test_outputs_that_cannot_be_used_are_refused_at_submit(idle_client: Client, encoder: Path, output: str,
                                                           says: str) -> None:
    # given an output URL that is malformed, carries secrets, or lies outside what the settings allow
    jobs_before = idle_client.redis.zcard(Keys.jobs)

    # when a job names it
    with pytest.raises(InvalidSpecError) as info:
        idle_client.submit(task="feature-extraction", model=str(encoder), inputs=["a"], output=output)

    # then it is refused before any job record is written, saying why, and never echoing a secret
    assert says in str(info.value)
    assert "hf_secret" not in str(info.value) and "secret@" not in str(info.value)
    assert idle_client.redis.zcard(Keys.jobs) == jobs_before
