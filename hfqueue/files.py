"""Files: atomic writes, and stamps that tell a rewritten file without reading it.

A file is written under a temporary name in its own folder, then renamed over the final name, so a reader (another
process, a resumed job) sees the old file or the new one whole, never half of one.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """A temporary path beside ``final`` (its folder is made) to write to; renamed over ``final`` when the block ends
    without an exception, removed when it raises.

    The temporary name starts with a dot and ends in ``.tmp``, so globs for finished files (``part-*.parquet``) never
    match it, and is unique (``mkstemp``), so two writers of one file (a chunk run twice) cannot collide.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, final)  # the same folder, so one filesystem: the rename is atomic
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_open(final: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """``final`` opened for writing (``"w"`` or ``"wb"``) through :func:`atomic_path`: closed, then renamed into
    place when the block ends; removed if it raises."""
    with atomic_path(final) as tmp, tmp.open(mode) as fh:
        yield fh


def atomic_text(final: Path, text: str) -> Path:
    """Write ``text`` to ``final`` atomically; returns ``final``."""
    with atomic_path(final) as tmp:
        tmp.write_text(text)
    return final


def stamp(paths: Iterable[Path]) -> str:
    """A sha256 (hex) of each path's name, size and modification time (``-`` for one that is gone): it changes when
    a file is rewritten, added or removed, and reads no file's bytes."""
    digest = hashlib.sha256()
    for path in paths:
        try:
            stat = path.stat()
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}\0-\n".encode())
    return digest.hexdigest()
