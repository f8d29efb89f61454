"""A finished job's results and errors as one streamed file: Parquet (one row group per chunk part, written as
it is read) or JSON Lines. Memory holds one part at a time, whatever the job's size."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


class _Sink:
    """A write-only file object that keeps what was written until it is taken."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> int:
        self.chunks.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def take(self) -> bytes:
        out, self.chunks = b"".join(self.chunks), []
        return out


def parquet(parts: list[Path], empty_schema: pa.Schema) -> Iterator[bytes]:
    """The parts as one Parquet file, yielded piece by piece."""
    sink = _Sink()
    schema = pq.read_schema(parts[0]) if parts else empty_schema
    with pq.ParquetWriter(pa.PythonFile(sink, mode="w"), schema) as writer:
        for part in parts:
            writer.write_table(pq.read_table(part).cast(schema))
            yield sink.take()
    yield sink.take()


def jsonl(parts: list[Path]) -> Iterator[bytes]:
    """The parts' rows as JSON Lines (bytes as base64 strings), yielded a part at a time."""
    for part in parts:
        rows = pq.read_table(part).to_pylist()
        yield "".join(json.dumps(row, default=_json_default) + "\n" for row in rows).encode()


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")
