"""What decides a row's output, as bytes: the row part of a result-cache key (:mod:`hfqueue.cache`).

A row is taken as the task sees it, after the column mapping and before tokenizing: a string, a ``{field: value}``
dict, chat messages, or media. Equal rows give equal bytes, whatever their dict order; values of different types
never collide (``"1"`` and ``1`` differ). Media given by reference (a file path, ``{"bytes": None, "path": ...}``)
is keyed by the file's contents, so an edited file is a new row.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any


def canonical(row: Any) -> bytes | None:
    """The row's bytes, or None for a value this cannot encode exactly (such a row is never reused)."""
    try:
        return _encode(row)
    except _Unkeyable:
        return None


def media_identity(row: Any) -> bytes | None:
    """A media row's bytes: a file path or a ``{"bytes", "path"}`` dict without bytes is keyed by the file's
    contents (None when it cannot be read: the task fails that row itself); anything else as :func:`canonical`."""
    if isinstance(row, str):
        return _file_digest(row)
    if isinstance(row, dict) and row.get("bytes") is None and isinstance(row.get("path"), str):
        return _file_digest(row["path"])
    if isinstance(row, dict) and isinstance(row.get("bytes"), bytes):
        return b"B" + hashlib.sha256(row["bytes"]).digest()  # the name beside the bytes does not decide the output
    return canonical(row)


class _Unkeyable(Exception):
    pass


def _encode(value: Any) -> bytes:
    if isinstance(value, str):
        return b"s" + value.encode("utf-8", "surrogatepass")
    if value is None or isinstance(value, (bool, int, float)):
        return b"j" + json.dumps(value).encode()  # exact: json writes floats with repr's round-trip digits
    if isinstance(value, (bytes, bytearray)):
        return b"B" + hashlib.sha256(value).digest()
    if isinstance(value, (list, tuple)):
        return b"[" + b"".join(_framed(_encode(v)) for v in value) + b"]"
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise _Unkeyable
        return b"{" + b"".join(_framed(_encode(k)) + _framed(_encode(value[k])) for k in sorted(value)) + b"}"
    return _encode_array_like(value)


def _encode_array_like(value: Any) -> bytes:
    import numpy as np

    if isinstance(value, np.ndarray):
        data = np.ascontiguousarray(value)
        head = f"{data.dtype.str}{data.shape}".encode()
        return b"a" + _framed(head) + hashlib.sha256(data.tobytes()).digest()
    if isinstance(value, np.generic):
        return _encode(value.item())
    if type(value).__module__.startswith("PIL."):  # a decoded image
        head = f"{value.mode}{value.size}".encode()
        return b"i" + _framed(head) + hashlib.sha256(value.tobytes()).digest()
    raise _Unkeyable


def _framed(data: bytes) -> bytes:
    return struct.pack("<Q", len(data)) + data


def _file_digest(path: str) -> bytes | None:
    digest = hashlib.sha256()
    try:
        with Path(path).expanduser().open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return b"F" + digest.digest()
