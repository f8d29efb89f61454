"""A job's output folder: one Parquet part per chunk plus ``manifest.json``, the durable record.

A job with inline inputs also keeps them here (``inputs.jsonl``), so the folder alone is enough to
rebuild the job when Redis loses it (``hfq resume``).

Rows that failed are not in the parts: each chunk with failed rows also writes
``errors/part-NNNNN.parquet`` with their ``row_idx``, ``error_type`` and ``error``. A chunk writes its error part
before its result part, so a result part on disk means the chunk is complete.

Parts are written to a temporary name and renamed, under a name fixed by the chunk index, so a chunk
that runs twice leaves one complete part and a reader never sees half a file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from hfqueue.core.paths import check_output_dir
from hfqueue.files import atomic_open, atomic_path

ROW_INDEX = "row_idx"
MANIFEST = "manifest.json"
INPUTS = "inputs.jsonl"
ERRORS = "errors"


def resolve_output_dir(output_root: Path, output_dir: str | None, job_id: str) -> Path:
    """The absolute folder a job writes to; it must lie inside ``output_root`` (symlinks resolved).

    A relative ``output_dir`` is taken under the root, so ``"run1"`` means ``<root>/run1``; the job id
    when none is given.
    """
    return check_output_dir(output_root, output_dir or job_id)


def part_path(out_dir: Path, index: int) -> Path:
    """Path of chunk ``index``'s part."""
    return out_dir / f"part-{index:05d}.parquet"


def error_part_path(out_dir: Path, index: int) -> Path:
    """Path of chunk ``index``'s error part (its failed rows)."""
    return part_path(out_dir / ERRORS, index)


def error_table(row_idx: list[int], errors: list[tuple[str, str]]) -> pa.Table:
    """The failed rows of a chunk: ``row_idx``, ``error_type`` (the exception's class) and ``error`` (its message)."""
    return pa.table({ROW_INDEX: pa.array(row_idx, pa.int64()),
                     "error_type": pa.array([t for t, _ in errors], pa.string()),
                     "error": pa.array([m for _, m in errors], pa.string())})


# Part metadata: how many of the part's rows were cut to the model's input limit, and how many were copied from the
# result cache (read back by resume and by a re-delivery).
_TRUNCATED, _REUSED = b"hfq.rows_truncated", b"hfq.rows_reused"


def write_part(out_dir: Path, index: int, table: pa.Table, rows_truncated: int = 0, rows_reused: int = 0) -> Path:
    """Write chunk ``index``'s rows atomically; a second write of the same chunk replaces the first whole."""
    counts = {key: str(n) for key, n in ((_TRUNCATED, rows_truncated), (_REUSED, rows_reused)) if n}
    if counts:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **counts})
    return _write_atomic(part_path(out_dir, index), table)


def write_error_part(out_dir: Path, index: int, table: pa.Table) -> Path:
    """Write chunk ``index``'s failed rows atomically under ``errors/``."""
    return _write_atomic(error_part_path(out_dir, index), table)


def _write_atomic(final: Path, table: pa.Table) -> Path:
    with atomic_path(final) as tmp:
        # Dictionary-encode text only: on float columns (embeddings, scores) it costs 5x the write time
        # for a larger file (measured on 1,000 MiniLM embeddings: 19 ms and 2.2 MB against 4 ms and 1.6 MB).
        text = [f.name for f in table.schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
        pq.write_table(table, str(tmp), use_dictionary=text)
    return final


def part_rows(path: Path) -> int:
    """Rows in a finished part, read from its footer."""
    return pq.ParquetFile(path).metadata.num_rows


class OnDisk(NamedTuple):
    """A chunk finished on disk: its rows that succeeded and failed, whether it failed whole, and how many of its
    rows were truncated."""

    rows_ok: int
    rows_failed: int
    failed_whole: bool
    rows_truncated: int = 0
    rows_reused: int = 0


def chunk_on_disk(out_dir: Path, index: int, rows: int) -> OnDisk | None:
    """What chunk ``index`` (``rows`` rows) left on disk when it finished, else None.

    Finished means its result part exists (the error part, if any, was written before it), or, for a
    chunk that failed whole, an error part holding all its rows.
    """
    part, errors = part_path(out_dir, index), error_part_path(out_dir, index)
    failed = part_rows(errors) if errors.exists() else 0
    if part.exists():
        meta = pq.ParquetFile(part).metadata
        counts = meta.metadata or {}
        return OnDisk(meta.num_rows, failed, failed_whole=False, rows_truncated=int(counts.get(_TRUNCATED, 0)),
                      rows_reused=int(counts.get(_REUSED, 0)))
    if failed == rows:
        return OnDisk(0, failed, failed_whole=True)
    return None


def part_files(out_dir: Path) -> list[Path]:
    """The finished parts of a job, in chunk order."""
    return sorted(out_dir.glob("part-*.parquet"))


def error_files(out_dir: Path) -> list[Path]:
    """The error parts of a job, in chunk order."""
    return part_files(out_dir / ERRORS)


def write_manifest(out_dir: Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest.json`` atomically."""
    with atomic_open(out_dir / MANIFEST) as fh:
        json.dump(manifest, fh, indent=2, sort_keys=True)


def write_inputs(out_dir: Path, rows: list[Any]) -> Path:
    """Keep a job's inline rows in its folder, one JSON value per line, written atomically."""
    with atomic_open(out_dir / INPUTS) as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    return out_dir / INPUTS


def read_inputs(out_dir: Path) -> list[Any]:
    """The inline rows kept by :func:`write_inputs`."""
    with (out_dir / INPUTS).open() as fh:
        return [json.loads(line) for line in fh]


def read_manifest(out_dir: Path) -> dict[str, Any]:
    """The job's manifest."""
    return json.loads((out_dir / MANIFEST).read_text())
