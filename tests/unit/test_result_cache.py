"""The result cache's store on a real disk and a real SQLite: right rows or a miss, never a wrong row, within its bound.

Concurrent writers and a writer killed mid-write are real processes (spawned), so the index's locks and the packs'
atomic renames are what is tested.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from hfqueue import tasks
from hfqueue.cache import store as cache_store
from hfqueue.cache.keys import fingerprint, row_keys
from hfqueue.cache.store import ResultCache
from hfqueue.cache.versions import folder_hash, folder_stamp, model_version
from hfqueue.cli.main import main
from hfqueue.core.config import Settings
from hfqueue.core.jobs import JobSpec
from hfqueue.worker.context import WorkerContext
from hfqueue.worker.reuse import fingerprint as job_fingerprint

pytestmark = pytest.mark.timeout(60)

FP = fingerprint({"test": 1})


def outputs_of(keys: list[bytes]) -> pa.Table:
    """Outputs that follow from each key alone, so any row can be checked against its key."""
    vectors = np.stack([np.frombuffer(k * 16, dtype=np.float32) for k in keys])
    return pa.table({"embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1]),
                     "label": pa.array([k.hex() for k in keys])})


def keys_of(texts: list[str]) -> list[bytes]:
    return [k for k in row_keys(FP, [t.encode() for t in texts]) if k is not None]


def fill(root: str, texts: list[str], per_pack: int, max_bytes: int | None = None) -> None:
    """Store ``texts``' outputs in packs of ``per_pack`` rows (run in a spawned process by some tests)."""
    cache = ResultCache(Path(root), max_bytes=max_bytes)
    keys = keys_of(texts)
    for start in range(0, len(keys), per_pack):
        part = keys[start:start + per_pack]
        cache.put(FP, "m", part, outputs_of(part), [False] * len(part), {"from": os.getpid()})


def check_rows(cache: ResultCache, keys: list[bytes]) -> int:
    """Look ``keys`` up and check every hit against its key; returns the number of hits."""
    hits = cache.lookup(keys, "m")
    if hits.outputs is None:
        return 0
    labels = hits.outputs.column("label").to_pylist()
    for position, label in zip(hits.positions, labels, strict=True):
        assert label == keys[position].hex()
    expected = outputs_of([keys[p] for p in hits.positions])
    bits = [t.column("embedding").combine_chunks().flatten().to_numpy().view(np.uint32) for t in (hits.outputs, expected)]
    np.testing.assert_array_equal(*bits)  # bit for bit (some of these floats are NaN)
    return len(hits.positions)


def test_rows_come_back_by_key_in_any_order_and_repeated(tmp_path: Path) -> None:
    # given 30 rows stored in three packs, one of them truncated
    cache = ResultCache(tmp_path)
    texts = [f"row {i}" for i in range(30)]
    keys = keys_of(texts)
    for start in range(0, 30, 10):
        part = keys[start:start + 10]
        cache.put(FP, "m", part, outputs_of(part), [i == 3 for i in range(start, start + 10)], {"a": 1})
    # when a lookup asks for some of them shuffled, one twice, among unknown keys
    asked = [keys[25], *keys_of(["new"]), keys[3], keys[0], keys[3], None]
    hits = cache.lookup(asked, "m")
    # then each known position gets its own row, the unknown ones none, and the truncated flag comes back
    assert sorted(hits.positions) == [0, 2, 3, 4]
    assert check_rows(cache, asked) == 4
    assert hits.truncated == {2, 4}
    assert cache.meta(FP) == {"a": 1}
    # and the statistics count the lookups and hits per model
    [stats] = cache.stats()
    assert (stats.model, stats.entries, stats.lookups, stats.hits) == ("m", 30, 12, 8)


def test_two_processes_filling_the_same_cache_at_once(tmp_path: Path) -> None:
    # given two processes storing overlapping rows into one cache folder at the same time, in small packs
    texts = [f"row {i}" for i in range(600)]
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=fill, args=(str(tmp_path), part, 20)) for part in (texts[:400], texts[200:])]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(50)
        assert proc.exitcode == 0
    # then every row is there exactly once, right, and the index is sound
    cache = ResultCache(tmp_path)
    assert check_rows(cache, keys_of(texts)) == 600
    with cache._read() as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("SELECT COUNT(*) FROM entries").fetchone()[0] == 600


def test_a_writer_killed_mid_write_leaves_whole_entries_or_none(tmp_path: Path) -> None:
    # given a process storing thousands of rows in small packs, killed with SIGKILL while it writes
    texts = [f"row {i}" for i in range(60_000)]
    proc = multiprocessing.get_context("spawn").Process(target=fill, args=(str(tmp_path), texts, 50))
    proc.start()
    deadline = time.monotonic() + 30
    while not list(tmp_path.glob("packs/*/*.arrow")) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)
    # when the cache is opened again
    cache = ResultCache(tmp_path)
    hits = check_rows(cache, keys_of(texts))
    # then what it holds is right (some, not all, was written) and every listed entry's pack is whole
    assert 0 < hits < len(texts)
    # and files left half-written are removed once stale, while whole packs stay
    for path in tmp_path.glob("packs/*/*"):
        os.utime(path, (time.time() - 2 * cache_store.STALE_SECONDS,) * 2)
    cache.prune()
    assert not list(tmp_path.glob("packs/*/.*.tmp"))
    assert check_rows(cache, keys_of(texts)) == hits


def test_a_corrupt_pack_or_index_is_a_miss_and_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # given rows stored, then their pack damaged
    keys = keys_of([f"row {i}" for i in range(10)])
    fill(str(tmp_path), [f"row {i}" for i in range(10)], 10)
    [pack] = tmp_path.glob("packs/*/*.arrow")
    pack.write_bytes(pack.read_bytes()[:-100])
    cache = ResultCache(tmp_path)
    with caplog.at_level(logging.WARNING):
        # then a lookup misses, warns, and forgets the pack
        assert cache.lookup(keys, "m").positions == []
    assert "unreadable" in caplog.text and not pack.exists()
    # given the index itself overwritten with garbage
    fill(str(tmp_path), [f"row {i}" for i in range(10)], 10)
    fresh = ResultCache(tmp_path)
    (tmp_path / "index.sqlite").write_bytes(b"this is not a database" * 100)
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"index.sqlite{suffix}").unlink(missing_ok=True)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        # then a lookup misses and warns, and the bad index is set aside
        assert fresh.lookup(keys, "m").positions == []
    assert "index failed" in caplog.text
    assert list(tmp_path.glob("index.sqlite.corrupt-*"))
    # and the cache starts over: rows stored now are found
    fill(str(tmp_path), [f"row {i}" for i in range(10)], 10)
    assert check_rows(ResultCache(tmp_path), keys) == 10


def test_pruning_keeps_the_bound_and_spares_a_pack_being_read(tmp_path: Path) -> None:
    # given a cache bounded to about five packs, filled with twenty
    texts = [f"row {i}" for i in range(400)]
    fill(str(tmp_path), texts[:20], 20)
    pack_bytes = ResultCache(tmp_path).size()
    bound = 5 * pack_bytes
    cache = ResultCache(tmp_path, max_bytes=bound)
    early = keys_of(texts[:20])
    cache.lookup(early, "m")  # the first pack is being read: pinned
    fill(str(tmp_path), texts[20:], 20, max_bytes=bound)
    # then the cache is within its bound, the newest rows are kept, and the pinned pack survived
    assert cache.size() <= bound
    assert check_rows(cache, early) == 20
    assert check_rows(cache, keys_of(texts[-20:])) == 20
    assert check_rows(cache, keys_of(texts[20:40])) == 0
    # when pruned to nothing, only the pinned pack (read just now) stays
    cache.prune(max_bytes=0)
    assert len(list(tmp_path.glob("packs/*/*.arrow"))) <= 2


def test_prune_by_age_and_model(tmp_path: Path) -> None:
    # given rows of two models
    cache = ResultCache(tmp_path)
    a, b = keys_of(["a1", "a2"]), keys_of(["b1"])
    cache.put(FP, "model-a", a, outputs_of(a), [False, False], {})
    cache.put(FP, "model-b", b, outputs_of(b), [False], {})
    # when pruning model-a's results unused for a day, then for no time at all
    assert cache.prune(older_than=86400, model="model-a").entries == 0
    pruned = cache.prune(older_than=0, model="model-a")
    # then only model-a's went
    assert (pruned.entries, pruned.packs) == (2, 1)
    assert [s.model for s in cache.stats()] == ["model-b"]


def test_hfq_cache_stats_and_prune(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    # given a cache folder named by HFQ_CACHE_DIR with rows of one model, looked up once
    fill(str(tmp_path), [f"row {i}" for i in range(40)], 20)
    ResultCache(tmp_path).lookup(keys_of([f"row {i}" for i in range(40)]) + keys_of(["x", "y"]) * 5, "m")
    monkeypatch.setenv("HFQ_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("HFQ_OUTPUT_ROOT", str(tmp_path / "out"))
    # when the stats are asked for
    assert main(["cache", "stats", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    # then they name the model, its entries and its hit rate
    assert stats["entries"] == 40 and stats["models"][0]["model"] == "m"
    assert stats["models"][0]["hit_rate"] == pytest.approx(40 / 50)
    assert main(["cache", "stats"]) == 0 and "80.0%" in capsys.readouterr().out
    # and a prune of what is older than an hour drops nothing, a bad age is refused
    assert main(["cache", "prune", "--older-than", "1h", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["entries"] == 0
    with pytest.raises(SystemExit):
        main(["cache", "prune", "--older-than", "soon"])


def test_hfq_cache_on_a_cache_never_written_creates_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    # given a cache folder nothing was ever stored in
    monkeypatch.setenv("HFQ_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HFQ_OUTPUT_ROOT", str(tmp_path / "out"))
    # when its stats are asked for, and it is pruned
    assert main(["cache", "stats", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert main(["cache", "prune"]) == 0
    # then it reads as empty, and looking created no folder
    assert (stats["entries"], stats["bytes"], stats["models"]) == (0, 0, [])
    assert "nothing stored" in capsys.readouterr().out
    assert not (tmp_path / "cache").exists()


def test_jobs_confined_to_another_output_root_key_rows_apart(tmp_path: Path, encoder_folder: Path) -> None:
    # given one job spec seen by workers of two output roots sharing one cache folder
    spec = JobSpec(task="feature-extraction", model=str(encoder_folder), inputs=["x"])
    task = tasks.get("feature-extraction")

    def fingerprint_under(root: str, **changes: object) -> str | None:
        settings = Settings(output_root=tmp_path / root, cache_dir=tmp_path / "shared", **changes)
        found = job_fingerprint(WorkerContext(settings, None, None, None), task, spec, "cpu")  # type: ignore[arg-type]
        return None if found is None else found[0]

    # then each root keys its rows apart, the same root alike, and an input limit that differs apart too
    assert fingerprint_under("a") == fingerprint_under("a")
    assert fingerprint_under("a") != fingerprint_under("b")
    assert fingerprint_under("a") != fingerprint_under("a", max_length=64)


@pytest.fixture
def encoder_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return folder


def test_row_identity_is_exact_and_media_is_keyed_by_content(tmp_path: Path) -> None:
    text, image = tasks.get("feature-extraction"), tasks.get("image-classification")
    # then dict order does not matter, types do, and a row that cannot be encoded exactly is not keyed
    assert text.row_identity({"a": "x", "b": [1, 2.5]}) == text.row_identity({"b": [1, 2.5], "a": "x"})
    assert text.row_identity("1") != text.row_identity(1) != text.row_identity(1.0)
    assert text.row_identity(object()) is None
    # and an image path is keyed by the file's bytes: an edited file is a new row, a copy the same row
    path = tmp_path / "a.png"
    path.write_bytes(b"first")
    before = image.row_identity(str(path))
    (tmp_path / "copy.png").write_bytes(b"first")
    assert image.row_identity(str(tmp_path / "copy.png")) == before
    path.write_bytes(b"second")
    assert image.row_identity(str(path)) != before
    assert image.row_identity(str(tmp_path / "missing.png")) is None


def test_a_folders_stamp_follows_its_files_and_its_hash_their_contents(tmp_path: Path) -> None:
    # given a model folder, its stamp and its content hash
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "weights.bin").write_bytes(b"\x00" * 64)
    stamp, digest = folder_stamp(folder), folder_hash(folder)
    # when a file is rewritten with the same bytes (a save of the same weights: a new mtime)
    (folder / "weights.bin").write_bytes(b"\x00" * 64)
    os.utime(folder / "weights.bin", ns=(1, 1))
    # then the stamp changes and the content hash does not
    assert folder_stamp(folder) != stamp and folder_hash(folder) == digest
    # and when its bytes change, both do
    (folder / "weights.bin").write_bytes(b"\x01" * 64)
    assert folder_stamp(folder) != stamp and folder_hash(folder) != digest
    # and a copy of the folder elsewhere has the same content hash
    copy = Path(shutil.copytree(folder, tmp_path / "copy"))
    assert folder_hash(copy) == folder_hash(folder)
    assert model_version(str(folder), None, content=False).startswith("files:")
