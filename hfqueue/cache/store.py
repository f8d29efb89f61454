"""The result cache on disk: an SQLite index over content-addressed Arrow packs, bounded by least-recent use.

Layout of the cache folder (``HFQ_CACHE_DIR``; by default ``.hfq-cache`` under the output root)::

    index.sqlite                  key -> (pack, row); each pack's size, model and last use; lookups and hits per model
    packs/<ab>/<sha256>.arrow     the outputs of one stored batch of rows (a chunk's new results), in Arrow IPC,
                                  named by the sha256 of its bytes

Why this shape: a chunk looks its rows up in one indexed query and copies its hits out of a few packs as Arrow
columns, never row by row, so a job whose rows all hit runs at tens of thousands of rows a second. Redis is no place
for millions of results (it runs ``noeviction``).

Safety:

- A pack is written under a temporary name and renamed into place, and only then listed in the index, in one SQLite
  transaction with its keys. A process killed at any point leaves either no entry or a whole one; a pack file left
  unlisted is removed by the next prune once it is an hour old.
- Two workers storing the same rows write identical packs (same name) or distinct ones; the index keeps the first
  entry of each key (``INSERT OR IGNORE``).
- Every pack read is checked against its name (sha256) and every copied row against its key. A pack that fails,
  or an index that does not open, is a miss and a warning, never a wrong row; the bad pack (or index) is set aside.
- Pruning drops least recently used packs until the cache is within its bound. A pack read in the last
  :data:`PIN_SECONDS` is never pruned: a job copying from it keeps it.

The index needs working POSIX file locks: a local disk, or a shared volume that has them (not NFS without locking).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from hfqueue.core.config import Settings
from hfqueue.files import atomic_path

logger = logging.getLogger(__name__)

PIN_SECONDS = 600  # a pack read this recently is not pruned: the job that read it may still be copying
STALE_SECONDS = 3600  # a temporary or unlisted pack file this old was left by a writer that died
KEY, TRUNCATED = "__hfq_key", "__hfq_truncated"  # the pack columns besides the task's outputs
_SQL_VARS = 900  # keys per IN (...) query

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (key BLOB PRIMARY KEY, pack TEXT NOT NULL, row INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entries_pack ON entries (pack);
CREATE TABLE IF NOT EXISTS packs (pack TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, model TEXT NOT NULL,
    bytes INTEGER NOT NULL, rows INTEGER NOT NULL, created REAL NOT NULL, used REAL NOT NULL, read REAL NOT NULL);
CREATE INDEX IF NOT EXISTS packs_used ON packs (used);
CREATE TABLE IF NOT EXISTS fingerprints (fingerprint TEXT PRIMARY KEY, meta TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS stats (model TEXT PRIMARY KEY, lookups INTEGER NOT NULL, hits INTEGER NOT NULL);
"""


@dataclass
class Hits:
    """The rows found: ``positions[i]`` (into the keys looked up) holds row ``i`` of ``outputs`` (the task's output
    columns); ``truncated``: those positions whose row was cut to the model's input limit."""

    positions: list[int] = field(default_factory=list)
    outputs: pa.Table | None = None
    truncated: set[int] = field(default_factory=set)


@dataclass
class ModelStats:
    """One model's share of the cache."""

    model: str
    entries: int
    bytes: int
    lookups: int
    hits: int

    @property
    def hit_rate(self) -> float | None:
        """Hits per row looked up, or None before any lookup."""
        return self.hits / self.lookups if self.lookups else None


@dataclass
class Pruned:
    """What a prune removed."""

    packs: int = 0
    entries: int = 0
    bytes: int = 0


class ResultCache:
    """The cache in folder ``root``; ``max_bytes`` bounds it (None: unbounded). Safe to share between threads."""

    @classmethod
    def of(cls, settings: Settings) -> "ResultCache":
        """The cache ``settings`` name: HFQ_CACHE_DIR (or the output root's), bounded by HFQ_CACHE_MAX_GB."""
        return cls(settings.result_cache_dir(), max_bytes=int(settings.cache_max_gb * 1e9))

    def __init__(self, root: Path, max_bytes: int | None = None) -> None:
        self.root = Path(root).expanduser()
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def exists(self) -> bool:
        """Whether anything was ever stored here (its index exists); asking does not create the folder."""
        return (self.root / "index.sqlite").is_file()

    # ---- reading ----

    def lookup(self, keys: Sequence[bytes | None], model: str) -> Hits:
        """The stored outputs of ``keys`` (None: not a key); counts the lookup and marks the packs used."""
        wanted: dict[bytes, list[int]] = defaultdict(list)
        for i, key in enumerate(keys):
            if key is not None:
                wanted[key].append(i)
        if not wanted:
            return Hits()
        now = time.time()
        try:
            with self._write() as db:
                found = [row for part in _parts(list(wanted), _SQL_VARS) for row in db.execute(
                    f"SELECT key, pack, row FROM entries WHERE key IN ({','.join('?' * len(part))})", part)]
                packs = sorted({pack for _, pack, _ in found})
                for part in _parts(packs, _SQL_VARS):
                    db.execute(f"UPDATE packs SET used = ?, read = ? WHERE pack IN ({','.join('?' * len(part))})",
                               [now, now, *part])
                db.execute("INSERT INTO stats VALUES (?, ?, ?) ON CONFLICT (model) DO UPDATE SET "
                           "lookups = lookups + excluded.lookups, hits = hits + excluded.hits",
                           (model, len(keys), sum(len(wanted[bytes(k)]) for k, _, _ in found)))
        except sqlite3.DatabaseError as exc:
            self._unusable(exc, "looking rows up")
            return Hits()
        by_pack: dict[str, list[tuple[bytes, int]]] = defaultdict(list)
        for key, pack, row in found:
            by_pack[pack].append((bytes(key), row))
        return self._copy(by_pack, wanted)

    def _copy(self, by_pack: dict[str, list[tuple[bytes, int]]], wanted: dict[bytes, list[int]]) -> Hits:
        hits, tables = Hits(), []
        for pack, rows in by_pack.items():
            table = self._read_pack(pack)
            if table is None:
                continue
            taken = table.take(pa.array([row for _, row in rows], pa.int64()))
            stored = taken.column(KEY).to_pylist()
            good = [j for j, (key, _) in enumerate(rows) if stored[j] == key]  # the index and the pack agree
            if len(good) < len(rows):
                logger.warning("result cache: pack %s does not hold %d of the keys the index puts there; those rows "
                               "are computed", pack, len(rows) - len(good))
                taken = taken.take(pa.array(good, pa.int64()))
            truncated = taken.column(TRUNCATED).to_pylist()
            # A row asked for twice in one lookup (equal rows) is copied once per position.
            repeat = [j for j, g in enumerate(good) for _ in wanted[rows[g][0]]]
            tables.append(taken.take(pa.array(repeat, pa.int64())))
            for j, g in enumerate(good):
                for position in wanted[rows[g][0]]:
                    hits.positions.append(position)
                    if truncated[j]:
                        hits.truncated.add(position)
        if tables:
            try:
                hits.outputs = pa.concat_tables(tables).drop_columns([KEY, TRUNCATED])
            except pa.ArrowInvalid as exc:  # packs of one fingerprint always agree; never mix what does not
                logger.warning("result cache: stored outputs disagree on their columns (%s); computing the rows", exc)
                return Hits()
        return hits

    def _read_pack(self, pack: str) -> pa.Table | None:
        path = self._pack_path(pack)
        try:
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() != pack:
                raise ValueError("its bytes do not match its sha256 name (corrupted or truncated)")
            return pa.ipc.open_file(pa.py_buffer(data)).read_all()
        except (OSError, ValueError, pa.ArrowException) as exc:
            logger.warning("result cache: pack %s is unreadable (%s); its rows are computed again and it is dropped",
                           path, exc)
            self._drop([pack])
            return None

    def meta(self, fingerprint: str) -> dict[str, Any] | None:
        """What was recorded about the model when ``fingerprint``'s rows were stored (its resolved fields), or None."""
        try:
            with self._read() as db:
                row = db.execute("SELECT meta FROM fingerprints WHERE fingerprint = ?", (fingerprint,)).fetchone()
        except sqlite3.DatabaseError as exc:
            self._unusable(exc, "reading a fingerprint")
            return None
        return json.loads(row[0]) if row else None

    # ---- writing ----

    def put(self, fingerprint: str, model: str, keys: Sequence[bytes], outputs: pa.Table, truncated: Sequence[bool],
            meta: dict[str, Any]) -> None:
        """Store the outputs of ``keys`` (row ``i`` of ``outputs`` is key ``i``'s) as one pack, then keep the bound."""
        if not keys:
            return
        table = outputs.add_column(0, KEY, pa.array(keys, pa.binary())).add_column(
            1, TRUNCATED, pa.array(truncated, pa.bool_()))
        sink = pa.BufferOutputStream()
        with pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        data = sink.getvalue().to_pybytes()
        pack = hashlib.sha256(data).hexdigest()
        path = self._pack_path(pack)
        try:
            if not path.exists():
                with atomic_path(path) as tmp:
                    tmp.write_bytes(data)
            now = time.time()
            with self._write() as db:
                db.execute("INSERT OR IGNORE INTO packs VALUES (?, ?, ?, ?, ?, ?, ?, 0)",
                           (pack, fingerprint, model, len(data), len(keys), now, now))
                db.executemany("INSERT OR IGNORE INTO entries VALUES (?, ?, ?)",
                               ((key, pack, row) for row, key in enumerate(keys)))
                db.execute("INSERT OR REPLACE INTO fingerprints VALUES (?, ?)", (fingerprint, json.dumps(meta)))
        except (OSError, sqlite3.DatabaseError) as exc:
            if isinstance(exc, sqlite3.DatabaseError):
                self._unusable(exc, "storing rows")
            else:
                logger.warning("result cache: cannot store %d rows in %s: %s", len(keys), self.root, exc)
            return
        if self.max_bytes is not None and self.size() > self.max_bytes:
            try:
                self.prune(max_bytes=self.max_bytes)
            except (OSError, sqlite3.DatabaseError) as exc:
                logger.warning("result cache %s: pruning to its bound failed: %s", self.root, exc)

    # ---- size, statistics, pruning ----

    def size(self) -> int:
        """Bytes the cache takes: its packs and its index."""
        try:
            with self._read() as db:
                return self._size_locked(db)
        except sqlite3.DatabaseError as exc:
            self._unusable(exc, "measuring it")
            return 0

    def stats(self) -> list[ModelStats]:
        """Entries, bytes, lookups and hits per model, largest first."""
        with self._read() as db:
            stored = {m: (e, b) for m, e, b in
                      db.execute("SELECT model, SUM(rows), SUM(bytes) FROM packs GROUP BY model")}
            looked = {m: (n, h) for m, n, h in db.execute("SELECT model, lookups, hits FROM stats")}
        out = [ModelStats(m, *stored.get(m, (0, 0)), *looked.get(m, (0, 0))) for m in {*stored, *looked}]
        return sorted(out, key=lambda s: (-s.bytes, s.model))

    def prune(self, *, max_bytes: int | None = None, older_than: float | None = None,
              model: str | None = None) -> Pruned:
        """Drop packs: those of ``model`` (every model when None) unused for ``older_than`` seconds, then the least
        recently used until the cache takes at most ``max_bytes``. Packs read in the last :data:`PIN_SECONDS` stay.
        Also removes files left by writers that died."""
        now = time.time()
        victims: dict[str, int] = {}  # pack -> bytes, in the order chosen
        with self._write() as db:
            if older_than is not None or model is not None:
                query = "SELECT pack, bytes FROM packs WHERE read < ?"
                args: list[Any] = [now - PIN_SECONDS]
                if older_than is not None:
                    query, args = query + " AND used < ?", [*args, now - older_than]
                if model is not None:
                    query, args = query + " AND model = ?", [*args, model]
                victims.update(db.execute(query, args))
            if max_bytes is not None:
                total = self._size_locked(db) - sum(victims.values())
                for pack, size in db.execute("SELECT pack, bytes FROM packs WHERE read < ? ORDER BY used",
                                             (now - PIN_SECONDS,)):
                    if total <= max_bytes:
                        break
                    if pack not in victims:
                        victims[pack] = size
                        total -= size
            pruned = self._delete_locked(db, list(victims))
        for pack in victims:
            self._pack_path(pack).unlink(missing_ok=True)
        self._sweep(now)
        if pruned.packs:
            logger.info("result cache: pruned %d packs (%d entries, %.1f MB)", pruned.packs, pruned.entries,
                        pruned.bytes / 1e6)
        return pruned

    def _size_locked(self, db: sqlite3.Connection) -> int:
        packs = db.execute("SELECT COALESCE(SUM(bytes), 0) FROM packs").fetchone()[0]
        pages = db.execute("PRAGMA page_count").fetchone()[0] * db.execute("PRAGMA page_size").fetchone()[0]
        return int(packs) + int(pages)

    def _delete_locked(self, db: sqlite3.Connection, packs: list[str]) -> Pruned:
        pruned = Pruned()
        for part in _parts(packs, _SQL_VARS):
            marks = ",".join("?" * len(part))
            pruned.bytes += db.execute(f"SELECT COALESCE(SUM(bytes), 0) FROM packs WHERE pack IN ({marks})",
                                       part).fetchone()[0]
            pruned.entries += db.execute(f"DELETE FROM entries WHERE pack IN ({marks})", part).rowcount
            pruned.packs += db.execute(f"DELETE FROM packs WHERE pack IN ({marks})", part).rowcount
        return pruned

    def _drop(self, packs: list[str]) -> None:
        """Forget packs that cannot be read, and remove their files."""
        try:
            with self._write() as db:
                self._delete_locked(db, packs)
        except sqlite3.DatabaseError as exc:
            self._unusable(exc, "dropping a bad pack")
        for pack in packs:
            self._pack_path(pack).unlink(missing_ok=True)

    def _sweep(self, now: float) -> None:
        """Remove temporary files and unlisted packs left by writers that died (an hour old or more)."""
        folder = self.root / "packs"
        if not folder.is_dir():
            return
        with self._read() as db:
            listed = {pack for (pack,) in db.execute("SELECT pack FROM packs")}
        for path in folder.glob("*/*"):
            try:
                stale = now - path.stat().st_mtime > STALE_SECONDS
            except OSError:
                continue
            if stale and (path.name.endswith(".tmp") or path.name.removesuffix(".arrow") not in listed):
                path.unlink(missing_ok=True)

    # ---- the index ----

    def _pack_path(self, pack: str) -> Path:
        return self.root / "packs" / pack[:2] / f"{pack}.arrow"

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            self.root.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.root / "index.sqlite", timeout=60, isolation_level=None,
                                 check_same_thread=False)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.executescript(_SCHEMA)
            except sqlite3.DatabaseError:
                db.close()
                raise
            self._db = db
        return self._db

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._connect()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: ``BEGIN IMMEDIATE`` takes the index's write lock at once (other processes wait)."""
        with self._lock:
            db = self._connect()
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _unusable(self, exc: sqlite3.DatabaseError, doing: str) -> None:
        """The index failed while ``doing``: warn; set a corrupt index aside so the next call starts a new one."""
        logger.warning("result cache %s: the index failed while %s (%s); rows are computed, not reused",
                       self.root, doing, exc)
        text = str(exc).lower()
        if "malformed" not in text and "not a database" not in text:
            return  # busy past the timeout, a full disk, ...: the index itself is fine
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
            index = self.root / "index.sqlite"
            aside = index.with_name(f"index.sqlite.corrupt-{int(time.time())}")
            try:
                index.rename(aside)
                for suffix in ("-wal", "-shm"):
                    index.with_name(index.name + suffix).unlink(missing_ok=True)
                logger.warning("result cache: set the corrupt index aside as %s; a new one starts empty", aside)
            except OSError:
                pass  # another process set it aside first


def _parts(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
