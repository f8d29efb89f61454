"""What a model (or PEFT adapter) resolves to, without loading it: the version part of a result-cache fingerprint,
and what a worker's resident model is checked against (a changed model loads anew).

- A local folder: ``sha256:<hex>`` of the names and contents of its files (hidden ones aside). Hashing reads every
  byte once per process and version: it is remembered by the files' sizes and modification times, so a
  later call costs a ``stat`` per file. With ``content=False``, ``files:<hex>`` of those names, sizes and
  modification times alone: what changes when a file is rewritten, without reading one (the model cache's check,
  which must not read a 15 GB folder for a job that reuses nothing).
- A Hub model: the commit its revision resolves to. A full commit hash is taken as given; a branch, tag or short
  hash is resolved through the Hub when online, else through the local Hub cache's refs and snapshots (where
  offline workers load from).
- A Hub dataset (:func:`dataset_version`): the same, for the commit a job's rows are read at (the producer pins it
  at submit, so every chunk and a resume read the rows that were counted).

None when the version cannot be known: nothing is then reused or stored for the job.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
from pathlib import Path

from hfqueue.files import stamp

logger = logging.getLogger(__name__)

COMMIT = re.compile(r"^[0-9a-f]{40}$")  # a full Hub commit hash
_lock = threading.Lock()
_folders: dict[tuple[str, tuple[tuple[str, int, int], ...]], str] = {}


def model_version(model: str, revision: str | None, *, content: bool = True) -> str | None:
    """The resolved version of ``model`` at ``revision`` (see the module), or None when it cannot be resolved;
    ``content=False``: a local folder's file stamp instead of its content hash (a Hub model's commit either way)."""
    folder = Path(model).expanduser()
    if folder.is_dir():
        return folder_hash(folder) if content else folder_stamp(folder)
    if revision is not None and COMMIT.match(revision):
        return revision
    return hub_commit(model, revision or "main")


def _files(root: Path) -> list[Path]:
    """The files under the resolved folder ``root``, hidden ones aside, in order."""
    return sorted(p for p in root.rglob("*") if p.is_file() and not any(
        part.startswith(".") for part in p.relative_to(root).parts))


def folder_stamp(folder: Path) -> str:
    """``files:<hex>``: a sha256 of the names, sizes and modification times of the files under ``folder``."""
    return "files:" + stamp(_files(folder.resolve()))


def folder_hash(folder: Path) -> str:
    """``sha256:<hex>`` of the relative names and contents of the files under ``folder`` (not hidden ones)."""
    root = folder.resolve()
    files = _files(root)
    signature = tuple((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    with _lock:
        known = _folders.get((str(root), signature))
    if known is not None:
        return known
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
        digest.update(b"\0")
    value = f"sha256:{digest.hexdigest()}"
    with _lock:
        _folders[(str(root), signature)] = value
    return value


def dataset_version(repo_id: str, revision: str | None) -> str | None:
    """The commit of Hub dataset ``repo_id`` at ``revision`` (default main), asked afresh (a job is submitted once;
    a push just before must be seen), or None when neither the Hub nor the local Hub cache knows it."""
    if revision is not None and COMMIT.match(revision):
        return revision
    return hub_commit(repo_id, revision or "main", repo_type="dataset", remember=False)


_REMEMBER_SECONDS = 60  # the Hub is asked again after this: a branch may move
_commits: dict[tuple[str, str, str], tuple[float, str | None]] = {}


def hub_commit(repo_id: str, revision: str, *, repo_type: str = "model", remember: bool = True) -> str | None:
    """The commit ``revision`` of Hub repo ``repo_id`` points at: asked of the Hub when online (remembered for a
    minute unless ``remember`` is false), else read from the local Hub cache (each time: a file read, and the
    cache's refs move when someone downloads a newer commit). None when neither knows."""
    if _offline():
        return cached_commit(repo_id, revision, repo_type=repo_type)
    key = (repo_type, repo_id, revision)
    with _lock:
        at, known = _commits.get(key, (0.0, None))
    if remember and time.monotonic() - at < _REMEMBER_SECONDS:
        return known
    commit = _ask_hub(repo_id, revision, repo_type)
    with _lock:
        _commits[key] = (time.monotonic(), commit)
    return commit


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _ask_hub(repo_id: str, revision: str, repo_type: str) -> str | None:
    try:
        from huggingface_hub import HfApi

        sha = HfApi().repo_info(repo_id, revision=revision, repo_type=repo_type, timeout=10).sha
        if sha:
            return str(sha)
    except Exception as exc:  # noqa: BLE001 - unreachable Hub, unknown repo: the local cache may still know
        logger.debug("cannot resolve %s %s@%s on the Hub: %s", repo_type, repo_id, revision, exc)
    return cached_commit(repo_id, revision, repo_type=repo_type)


def cached_commit(repo_id: str, revision: str, cache_dir: Path | None = None, *, repo_type: str = "model"
                  ) -> str | None:
    """The commit of ``revision`` in the local Hub cache: a ref (branch, tag) file, or the one snapshot whose
    name starts with a short hash. None when the cache holds neither."""
    from huggingface_hub import constants

    repo = Path(cache_dir or constants.HF_HUB_CACHE) / f"{repo_type}s--{repo_id.replace('/', '--')}"
    ref = repo / "refs" / revision
    if ref.is_file():
        commit = ref.read_text().strip()
        return commit if COMMIT.match(commit) else None
    if re.fullmatch(r"[0-9a-f]{7,40}", revision):
        found = [p.name for p in (repo / "snapshots").glob(f"{revision}*") if COMMIT.match(p.name)]
        if len(found) == 1:
            return found[0]
    return None
