"""Abuse: what a hostile spec or a forged message can make a worker do, and what Redis credentials leak.

Real redis-servers (one with a password, one behind TLS), real worker processes, tiny real models.
``trust_remote_code`` refusals are covered in tests/integration: a small job
(test_tasks_bad_input.py::test_trust_remote_code_is_refused_unless_the_worker_allows_it), a
``client.infer`` request (test_infer.py::test_requests_that_differ_in_load_options_are_not_batched_together);
the chunk queue's case is here.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import datasets
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from hfqueue import Client, ConfigError, HfqError, InvalidSpecError, JobFailedError, JobState, Settings
from hfqueue.core.config import load_settings
from hfqueue.state.broker import CHUNK_TASK
from hfqueue.state.embedded import RedisServer
from hfqueue.state.keys import Keys
from tests.conftest import WorkerProcess, settings_env
from tests.faults.tls_proxy import TlsProxy, make_certificates

pytestmark = pytest.mark.timeout(60)


def write_rows(path: Path, rows: list[str]) -> Path:
    """``rows`` as a jsonl data file with a ``text`` column: a job over it always goes through the chunk queue."""
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))
    return path


def queued_messages(client: Client) -> list[dict[str, Any]]:
    """The Celery messages waiting on the client's queue, as stored in Redis (envelope, headers, body)."""
    return [json.loads(raw) for raw in client.redis.lrange(client.settings.queue, 0, -1)]


def chunk_message(envelope: dict[str, Any]) -> dict[str, Any]:
    """The chunk message (the task's one argument) inside a stored Celery message."""
    args, _kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
    return args[0]


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``condition`` until it is truthy; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def dump(r: redis.Redis) -> str:
    """Every key of the database and everything stored under it, as one string."""
    out = []
    for key in r.scan_iter(count=1000):
        kind = r.type(key)
        if kind == "none":  # gone since the scan
            continue
        value: Any = {"string": r.get, "list": lambda k: r.lrange(k, 0, -1), "hash": r.hgetall,
                      "set": r.smembers, "zset": lambda k: r.zrange(k, 0, -1, withscores=True)}[kind](key)
        out.append(f"{key} {kind} {value}")
    return "\n".join(out)


# --- JSON only on the wire ---------------------------------------------------------------------------------


def test_a_pickled_message_is_refused_and_the_worker_keeps_serving(client: Client, idle_client: Client,
                                                                   worker: WorkerProcess, encoder: Path,
                                                                   texts: list[str], tmp_path: Path) -> None:
    # given a real job's chunk message, taken from a queue no worker serves
    job = idle_client.submit(task="feature-extraction", model=str(encoder),
                             dataset=str(write_rows(tmp_path / "rows.jsonl", texts[:10])))
    message = chunk_message(queued_messages(idle_client)[0])
    refusals = worker.log.read_text().count("untrusted content of type pickle")

    # when it is sent pickled to the queue the worker serves
    client.celery.send_task(CHUNK_TASK, args=[message], queue=client.settings.queue, serializer="pickle")

    # then the worker refuses to decode it and logs why; the chunk never started
    wait_for(lambda: worker.log.read_text().count("untrusted content of type pickle") > refusals, 30,
             "the worker to refuse the pickled message")
    assert "ContentDisallowed" in worker.log.read_text()
    status = idle_client.job(job.id).status()
    assert status.state == JobState.QUEUED and status.started_at is None and job.chunks() == {}
    # and the same worker still runs a JSON job
    assert client.submit(task="feature-extraction", model=str(encoder), inputs=texts[:3]).wait(30).rows_done == 3


def test_workers_and_producers_accept_json_only(client: Client, worker: WorkerProcess) -> None:
    # given the running worker's configuration, as `celery inspect conf` (and Flower) read it
    confs = client.celery.control.inspect(timeout=10, limit=1).conf() or {}
    assert confs, "no worker answered"

    # then tasks and results are JSON in and out, on the worker and in this producer
    for conf in [*confs.values(), dict(client.celery.conf)]:
        assert conf["accept_content"] == ["json"] and conf["result_accept_content"] == ["json"]
        assert conf["task_serializer"] == "json" and conf["result_serializer"] == "json"


# --- trust_remote_code ------------------------------------------------------------------------------------


def test_trust_remote_code_is_refused_for_a_chunked_job(client: Client, encoder: Path, texts: list[str],
                                                        tmp_path: Path) -> None:
    # given a worker with HFQ_ALLOW_REMOTE_CODE=false and a job over a data file (the chunk queue)
    assert client.settings.allow_remote_code is False
    rows = write_rows(tmp_path / "rows.jsonl", texts[:20])

    # when the job asks to run the model's own code, then it fails naming the setting
    job = client.submit(task="feature-extraction", model=str(encoder), dataset=str(rows), trust_remote_code=True)
    with pytest.raises(JobFailedError, match="HFQ_ALLOW_REMOTE_CODE=true"):
        job.wait(timeout=30)
    assert job.status().rows_done == 0


# --- local paths at submit --------------------------------------------------------------------------------


@pytest.fixture
def rooted(settings: Settings, encoder: Path, texts: list[str], tmp_path: Path) -> Iterator[tuple[Client, Path]]:
    """A client whose only input root is ``tmp_path/in`` and output root ``tmp_path/out``, on a queue no worker
    serves; beside them, ``tmp_path/outside`` holds a real dataset, data file, model and output folder, and
    the roots hold symlinks to each."""
    inside, outside, out = tmp_path / "in", tmp_path / "outside", tmp_path / "out"
    for base in (inside, outside):
        shutil.copytree(encoder, base / "model")
        datasets.Dataset.from_dict({"text": texts[:10]}).save_to_disk(base / "ds")
        write_rows(base / "rows.jsonl", texts[:10])
    (outside / "results").mkdir()
    out.mkdir()
    for link, target in (("link-model", "model"), ("link-ds", "ds"), ("link.jsonl", "rows.jsonl")):
        (inside / link).symlink_to(outside / target)
    (out / "link-out").symlink_to(outside / "results")
    own = settings.model_copy(update={"input_roots": [inside], "output_root": out,
                                      "queue": f"idle-{time.monotonic_ns()}"})
    with Client(own) as c:
        yield c, tmp_path


def base_spec(root: Path) -> dict[str, Any]:
    """A spec that reads and writes only inside the roots of :func:`rooted`."""
    return {"task": "feature-extraction", "model": str(root / "in" / "model"), "dataset": str(root / "in" / "ds")}


ESCAPES: list[tuple[str, str, str, str, str]] = [
    # (case, spec field, value with {t} for tmp_path, what the error calls it, the outside path it leads to)
    ("output_dir ../", "output_dir", "../outside/results", "output_dir", "outside/results"),
    ("output_dir absolute", "output_dir", "{t}/outside/results", "output_dir", "outside/results"),
    ("output_dir symlink", "output_dir", "link-out", "output_dir", "outside/results"),
    ("dataset folder ../", "dataset", "{t}/in/../outside/ds", "dataset folder", "outside/ds"),
    ("dataset folder absolute", "dataset", "{t}/outside/ds", "dataset folder", "outside/ds"),
    ("dataset folder symlink", "dataset", "{t}/in/link-ds", "dataset folder", "outside/ds"),
    # a glob outside is refused by where its fixed part leads, before it is matched (nothing said of what exists)
    ("data files ../", "dataset", "{t}/in/../outside/*.jsonl", "data file", "outside"),
    ("data files absolute", "dataset", "{t}/outside/*.jsonl", "data file", "outside"),
    ("data files symlink", "dataset", "{t}/in/*.jsonl", "data file", "outside/rows.jsonl"),
    ("model folder ../", "model", "{t}/in/../outside/model", "model folder", "outside/model"),
    ("model folder absolute", "model", "{t}/outside/model", "model folder", "outside/model"),
    ("model folder symlink", "model", "{t}/in/link-model", "model folder", "outside/model"),
]


@pytest.mark.parametrize(("case", "field", "value", "what", "target"), ESCAPES, ids=[c[0] for c in ESCAPES])
def test_a_path_outside_the_roots_is_refused_at_submit(rooted: tuple[Client, Path], case: str, field: str,
                                                       value: str, what: str, target: str) -> None:
    # given a spec that reads and writes inside the roots, but for one path that leads outside
    client, root = rooted
    spec = {**base_spec(root), field: value.format(t=root)}
    jobs_before = client.store.job_ids(10_000)

    # when it is submitted, then the error names the path, where it led, and the setting to change
    with pytest.raises(InvalidSpecError, match=f"^{what} ") as caught:
        client.submit(**spec)
    assert f"resolves to {(root / target).resolve()}, outside the" in str(caught.value)
    assert ("HFQ_OUTPUT_ROOT" if field == "output_dir" else "HFQ_INPUT_ROOTS") in str(caught.value)

    # and nothing was recorded, enqueued or written
    assert client.store.job_ids(10_000) == jobs_before and client.redis.llen(client.settings.queue) == 0
    assert not list(root.rglob("manifest.json")) and not any((root / "outside" / "results").iterdir())


def test_paths_inside_the_roots_are_accepted(rooted: tuple[Client, Path]) -> None:
    # given the same roots, and paths that stay inside them (one through a symlink that points inside)
    client, root = rooted
    (root / "in" / "link-inside").symlink_to(root / "in" / "ds")

    # when jobs over the folder, the data files and through the symlink are submitted, then each is queued
    for dataset in (root / "in" / "ds", root / "in" / "rows.jsonl", root / "in" / "link-inside"):
        job = client.submit(**{**base_spec(root), "dataset": str(dataset)})
        assert job.status().state == JobState.QUEUED and job.output_dir.parent == (root / "out").resolve()
        job.cancel()


# --- forged messages: the worker checks again -------------------------------------------------------------


@pytest.fixture
def outside(encoder: Path, texts: list[str]) -> Iterator[Path]:
    """A folder outside every root of the session's worker, holding a real model and data file."""
    with tempfile.TemporaryDirectory(prefix="hfq-outside-") as folder:
        path = Path(folder)
        shutil.copytree(encoder, path / "model")
        write_rows(path / "rows.jsonl", texts[:16])
        yield path


FORGERIES: dict[str, Callable[[dict[str, Any], Path], None]] = {
    "output_dir": lambda m, o: m.update(output_dir=str(o / "results")),
    "data file": lambda m, o: m["source"].update(kind="files", builder="json", data_files=[str(o / "rows.jsonl")]),
    "model folder": lambda m, o: m["spec"].update(model=str(o / "model")),
}


@pytest.mark.parametrize("carrier", ["chunk queue", "request lane"])
@pytest.mark.parametrize("forged", list(FORGERIES))
def test_a_forged_message_outside_the_workers_roots_fails_its_job_and_touches_nothing(
        client: Client, idle_client: Client, encoder: Path, texts: list[str], outside: Path, tmp_path: Path,
        carrier: str, forged: str) -> None:
    # given a real job queued where no worker serves, and its message altered to point outside the worker's roots
    if carrier == "chunk queue":
        job = idle_client.submit(task="feature-extraction", model=str(encoder),
                                 dataset=str(write_rows(tmp_path / "rows.jsonl", texts[:16])))
        message = chunk_message(queued_messages(idle_client)[0])
        FORGERIES[forged](message, outside)

        # when the forged message is sent, as JSON, to the queue the session's worker serves
        client.celery.send_task(CHUNK_TASK, args=[message], queue=client.settings.queue)
    else:
        job = idle_client.submit(task="feature-extraction", model=str(encoder), inputs=texts[:16])
        entry = json.loads(idle_client.redis.lpop(Keys.requests(idle_client.settings.queue)))
        # the lane runs the model of the entry's own spec; the job's copy only shapes the results
        FORGERIES[forged]({"spec": entry["spec"]} if forged == "model folder" else entry["job"], outside)
        client.redis.rpush(Keys.requests(client.settings.queue), json.dumps(entry))

    # then the job fails with a reason naming the refused path, and nothing appears outside
    with pytest.raises(JobFailedError, match=f"{forged} .*outside the (input|output) root"):
        idle_client.job(job.id).wait(timeout=30)
    assert str(outside) in (job.status().error or "")
    assert sorted(p.name for p in outside.iterdir()) == ["model", "rows.jsonl"]
    assert not list(job.output_dir.glob("*.parquet")) and job.status().rows_done == 0


MALFORMED: dict[str, Callable[[dict[str, Any]], None]] = {
    "a field missing": lambda m: m.pop("output_dir"),
    "a field it should not carry": lambda m: m.update(shell="rm -rf /"),
}


@pytest.mark.parametrize("carrier", ["chunk queue", "request lane"])
@pytest.mark.parametrize("malformed", list(MALFORMED))
def test_a_message_that_does_not_validate_is_refused_and_logged_and_touches_nothing(
        client: Client, idle_client: Client, worker: WorkerProcess, encoder: Path, texts: list[str],
        tmp_path: Path, carrier: str, malformed: str) -> None:
    # given a real job queued where no worker serves, and its message altered so it no longer validates
    refusals = worker.log.read_text().count("does not validate")
    if carrier == "chunk queue":
        job = idle_client.submit(task="feature-extraction", model=str(encoder),
                                 dataset=str(write_rows(tmp_path / "rows.jsonl", texts[:16])))
        message = chunk_message(queued_messages(idle_client)[0])
        MALFORMED[malformed](message)

        # when it is sent, as JSON, to the queue the session's worker serves
        client.celery.send_task(CHUNK_TASK, args=[message], queue=client.settings.queue)
    else:
        job = idle_client.submit(task="feature-extraction", model=str(encoder), inputs=texts[:16])
        entry = json.loads(idle_client.redis.lpop(Keys.requests(idle_client.settings.queue)))
        MALFORMED[malformed](entry["job"])
        client.redis.rpush(Keys.requests(client.settings.queue), json.dumps(entry))

    # then the worker refuses it and logs why (it cannot name a job reliably, so no job is touched)
    wait_for(lambda: worker.log.read_text().count("does not validate") > refusals, 30, "the worker to refuse it")
    assert ("output_dir: Field required" if malformed == "a field missing" else
            "shell: Extra inputs are not permitted") in worker.log.read_text()
    if carrier == "request lane":  # dropped from the lane: nobody holds it
        wait_for(lambda: not client.redis.llen(Keys.requests(client.settings.queue)), 10, "the lane to drain")
    status = idle_client.job(job.id).status()
    assert status.state == JobState.QUEUED and status.started_at is None and job.chunks() == {}
    assert not list(job.output_dir.glob("*.parquet"))
    # and the same worker still runs a job
    assert client.submit(task="feature-extraction", model=str(encoder), inputs=texts[:3]).wait(30).rows_done == 3


def test_infer_with_a_model_outside_the_roots_is_refused(client: Client, outside: Path) -> None:
    # given a model folder outside the worker's input roots, when client.infer asks for it
    with pytest.raises(HfqError, match="refuses the model: model folder .*outside the input roots"):
        client.infer("feature-extraction", ["hello"], str(outside / "model"), timeout=30)


# --- Redis credentials ------------------------------------------------------------------------------------


@pytest.mark.timeout(10)
def test_a_rediss_url_must_say_how_to_check_the_certificate() -> None:
    # given a TLS URL that does not say whether to verify the server (kombu would quietly not verify it)
    url = "rediss://:pw-hidden@redis.internal:6380/0"

    # when settings are built from it, then they are refused with the fix, and the message hides the password
    with pytest.raises(ConfigError, match="ssl_cert_reqs=required") as caught:
        load_settings(broker_url=url)
    assert "rediss://:***@redis.internal:6380/0" in str(caught.value) and "pw-hidden" not in str(caught.value)


@pytest.mark.timeout(90)
def test_a_redis_password_works_and_never_leaks(settings: Settings, worker_factory: Callable[..., WorkerProcess],
                                                encoder: Path, texts: list[str], tmp_path: Path) -> None:
    # given a password-protected redis-server, a worker using it, and a job waiting on a queue nobody serves
    password = f"pw-{secrets.token_hex(12)}"
    rows = write_rows(tmp_path / "rows.jsonl", texts[:20])
    with RedisServer(tmp_path / "redis", password=password) as server:
        own = settings.model_copy(update={"broker_url": server.url, "queue": "secret"})
        worker = worker_factory(own)
        try:
            with Client(own) as client, Client(own.model_copy(update={"queue": "secret-idle"})) as idle:
                idle.submit(task="feature-extraction", model=str(encoder), dataset=str(rows))
                idle.submit(task="feature-extraction", model=str(encoder), inputs=texts[:2])  # a lane entry

                # when a job runs through the worker
                job = client.submit(task="feature-extraction", model=str(encoder), dataset=str(rows))
                status = job.wait(timeout=60)
                stored = dump(client.redis)
                confs = json.dumps(client.celery.control.inspect(timeout=10, limit=1).conf())
                manifest = (job.output_dir / "manifest.json").read_text()
            cli = subprocess.run([sys.executable, "-m", "hfqueue", "status", job.id, "--json", "--chunks"],
                                 env=settings_env(own), capture_output=True, text=True, timeout=60)
        finally:
            worker.stop()

    # then it completed, and the password is in none of what the job left or showed
    assert status.state == JobState.COMPLETED and status.rows_done == 20
    assert cli.returncode == 0 and json.loads(cli.stdout)["job_id"] == job.id
    log = worker.log.read_text()
    assert "redis://:**@127.0.0.1" in log  # Celery's banner names the broker, masked
    # the stored messages are what Flower shows: their argsrepr header carries the task's arguments
    assert CHUNK_TASK in stored and "argsrepr" in stored and job.id in stored and "accept_content" in confs
    for where, text in {"worker log": log, "status": status.model_dump_json(), "hfq status --json": cli.stdout,
                        "hfq status stderr": cli.stderr, "manifest": manifest,
                        "Redis keys and messages": stored, "inspect conf": confs}.items():
        assert password not in text, where


@pytest.mark.timeout(90)
def test_rediss_with_a_verified_certificate_runs_a_job(settings: Settings, worker_factory: Callable[..., WorkerProcess],
                                                       encoder: Path, texts: list[str], tmp_path: Path) -> None:
    # given a password-protected redis-server reachable only through TLS, with a certificate from a private CA
    ca, cert, key = make_certificates(tmp_path / "tls")
    password = f"pw-{secrets.token_hex(12)}"
    with RedisServer(tmp_path / "redis", password=password) as server, TlsProxy(server.port, cert, key) as proxy:
        url = f"rediss://:{password}@127.0.0.1:{proxy.port}/0?ssl_cert_reqs=required&ssl_ca_certs={ca}"
        # a client that does not trust the CA is turned away: the certificate really is checked
        untrusting = redis.Redis.from_url(url.replace(f"&ssl_ca_certs={ca}", ""), retry=Retry(NoBackoff(), 0),
                                          socket_connect_timeout=5)
        with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            untrusting.ping()
        untrusting.close()

        # when a worker and a client use the rediss:// URL and a job runs
        own = settings.model_copy(update={"broker_url": url, "queue": "tls"})
        worker = worker_factory(own)
        try:
            with Client(own) as client:
                status = client.submit(task="feature-extraction", model=str(encoder),
                                       dataset=str(write_rows(tmp_path / "rows.jsonl", texts[:20]))).wait(timeout=60)
        finally:
            worker.stop()

    # then it completed, everything went through the proxy, and the worker's log does not show the password
    assert status.state == JobState.COMPLETED and status.rows_done == 20
    assert proxy.connections >= 3  # this client, the worker's broker connection, its job store
    log = worker.log.read_text()
    assert "rediss://:**@127.0.0.1" in log and password not in log


# --- every key has a TTL or an owner ----------------------------------------------------------------------

# Keys that live without a TTL, each with the owner that removes what it holds.
# Patterns are regular expressions matched against the whole key.
OWNED = {
    r"hfq:jobs": "JobStore: sorted set of job ids, pruned of expired jobs by JobStore.create and job_ids",
    r"hfq:batches": "openai_batch.batch.submit: sorted set of batch ids, pruned of expired batches on each submit",
    r"hfq:requests:[^:]+": "request lane of a queue: workers take its entries; Redis drops the list once empty",
    r"_kombu\.binding\..+": "kombu: a queue's bindings to its exchange, one small set per exchange",
    r"_kombu\.binding_permanent\..+": "kombu: the bindings of queues without x-expires, per exchange",
    r"_kombu\.binding_deadlines": "kombu: when each exchange's bindings are swept, trimmed by that sweep",
    "unacked": "kombu: messages being worked on, removed on ack, restored after the visibility timeout",
    "unacked_index": "kombu: delivery times of the unacked messages, trimmed with them",
    # A ping's reply queue has a TTL while its caller waits (kombu sets x-expires from the declaring channel only);
    # a worker's reply that lands after the caller stopped waiting, when the emptied list is gone, recreates it
    # without one. One per pinging process (the queue is named by it), holding its few late replies; seen here when
    # many workers of earlier tests answered one ping on two loaded cores.
    r"[0-9a-f-]{36}\.reply\.celery\.pidbox": "kombu: a ping reply that arrived after its caller stopped waiting",
}


def test_every_key_has_a_ttl_or_an_owner(client: Client, idle_client: Client, encoder: Path, texts: list[str],
                                         tmp_path: Path) -> None:
    # given a chunked job, a small job (request lane), an infer call and a cancelled job, all finished
    r = client.redis
    client.submit(task="feature-extraction", model=str(encoder),
                  dataset=str(write_rows(tmp_path / "rows.jsonl", texts[:40]))).wait(timeout=30)
    client.submit(task="feature-extraction", model=str(encoder), inputs=texts[:3]).wait(timeout=30)
    client.infer("feature-extraction", texts[:2], str(encoder), timeout=30)
    idle_client.submit(task="feature-extraction", model=str(encoder), inputs=texts[:40], chunk_size=4).cancel()
    client.workers()  # a control round trip leaves its reply queue behind
    # and an OpenAI batch that completed, and one cancelled
    line = {"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {"model": str(encoder), "input": "x"}}
    (tmp_path / "batch.jsonl").write_text(json.dumps(line) + "\n")
    client.submit_openai_batch(tmp_path / "batch.jsonl").wait(timeout=30)
    idle_client.submit_openai_batch(tmp_path / "batch.jsonl").cancel()

    # when every key of the database is looked at
    keys = sorted(r.scan_iter(count=1000))
    assert any(k.startswith("hfq:job:") for k in keys) and client.settings.queue in [
        k.removeprefix("_kombu.binding.") for k in keys]

    # then each has a TTL, or is a Celery queue (a list with a kombu binding), or has a named owner
    def owner(key: str) -> str | None:
        if r.type(key) == "list" and f"_kombu.binding.{key}" in keys:
            return "kombu: a Celery queue, drained by the workers that serve it"
        return next((why for pattern, why in OWNED.items() if re.fullmatch(pattern, key)), None)

    orphans = [f"{k} ({r.type(k)})" for k in keys if r.ttl(k) == -1 and owner(k) is None]  # -1: no TTL
    assert not orphans, f"keys with neither a TTL nor an owner: {orphans}"
