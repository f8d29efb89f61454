"""Result-cache keys: a job's fingerprint, and each row's key under it.

The fingerprint hashes everything besides the row that can change an output: the task, the model and its resolved
revision, the adapter and its revision, every option, the input limit and truncation, the precision, the engine,
quantization, the output root the job is confined to, and :data:`SCHEMA_VERSION`. A row's key is a 16-byte BLAKE2b
of the row's bytes (:meth:`hfqueue.tasks.base.Task.row_identity`) keyed with the fingerprint.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

# Bump when what a task writes for a row changes (a new column, another type, another rounding): entries written
# before are then never found again, and age out of the cache.
SCHEMA_VERSION = 1

KEY_BYTES = 16


def fingerprint(fields: dict[str, Any]) -> str:
    """The hex fingerprint of a job's output-deciding ``fields`` (JSON values; the order of keys does not matter)."""
    body = json.dumps({**fields, "schema": SCHEMA_VERSION}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


def row_keys(fingerprint_hex: str, identities: Sequence[bytes | None]) -> list[bytes | None]:
    """The cache key of each row from its identity bytes; None stays None (a row that is never reused)."""
    secret = bytes.fromhex(fingerprint_hex)[:32]  # BLAKE2b takes a key of at most 64 bytes
    return [None if raw is None else hashlib.blake2b(raw, digest_size=KEY_BYTES, key=secret).digest()
            for raw in identities]
