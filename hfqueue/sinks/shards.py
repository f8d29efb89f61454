"""A finished job's parts regrouped into the shard layout the Hub's dataset viewer reads.

``data/train-00000-of-00003.parquet`` ... hold the results (consecutive chunk parts, about
``HFQ_HUB_SHARD_MB`` each), ``errors/train-...`` the failed rows, ``README.md`` the dataset card that
declares both as configurations. The shards are built once into ``<output folder>/.publish/`` and kept
there, so a retried upload compares the same bytes (same SHA-256) with what the remote already holds and
sends only what is missing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from hfqueue.files import atomic_path, atomic_text
from hfqueue.sinks.local import error_files, part_files

STAGING = ".publish"
_LAYOUT = "layout.json"  # written last: its presence means every shard in it is complete


@dataclass(frozen=True)
class Shard:
    """One file to publish: where it goes in the repo, where it is on disk, its size and SHA-256."""

    path_in_repo: str
    local: Path
    size: int
    sha256: str


def build(out_dir: Path, shard_bytes: int) -> list[Shard]:
    """The job's result and error shards, built into ``out_dir/.publish`` (or read back from an earlier build)."""
    staging = out_dir / STAGING
    layout = staging / _LAYOUT
    if layout.exists():
        return [Shard(s["path_in_repo"], staging / s["path_in_repo"], s["size"], s["sha256"])
                for s in json.loads(layout.read_text())]
    shards = _write(part_files(out_dir), staging, "data", shard_bytes) + \
        _write(error_files(out_dir), staging, "errors", shard_bytes)
    atomic_text(layout, json.dumps([{"path_in_repo": s.path_in_repo, "size": s.size, "sha256": s.sha256}
                                    for s in shards]))
    return shards


def _write(parts: list[Path], staging: Path, folder: str, shard_bytes: int) -> list[Shard]:
    """Concatenate consecutive ``parts`` into shards of about ``shard_bytes``, part by part (bounded memory)."""
    groups: list[list[Path]] = []
    size = 0
    for part in parts:
        if not groups or size >= shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(part)
        size += part.stat().st_size
    shards = []
    for i, group in enumerate(groups):
        name = f"{folder}/train-{i:05d}-of-{len(groups):05d}.parquet"
        target = staging / name
        schema = pq.read_schema(group[0])
        # A temporary name of its own: two publishers of one job may build at once.
        with atomic_path(target) as tmp, pq.ParquetWriter(str(tmp), schema) as writer:
            for part in group:
                # Parts of one job share a schema; cast anyway so a column typed null in one part cannot break it.
                writer.write_table(pq.read_table(part).cast(schema))
        shards.append(Shard(name, target, target.stat().st_size, sha256(target)))
    return shards


def sha256(path: Path) -> str:
    """The file's SHA-256, as the Hub's LFS storage names objects."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
