"""The disk cache of engine artifacts: one folder per (model, revision, engine), built once across processes.

Layout: ``cache_root/<safe model id>/<revision>/<engine>/`` holding what :func:`export` wrote, with
``<engine>.lock`` beside it. Worker processes that start together take the lock in turn: the first builds,
the others find the artifact ready. A folder is used only when every file matches the sha256 in its
``meta.json``; a truncated or corrupted artifact (a crash mid-copy, a full disk, a hand edit) is rebuilt.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from hfqueue.errors import ModelLoadError
from hfqueue.files import stamp
from hfqueue.tasks.engines.export import read_meta, sha256

logger = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# What decides a local folder's weights: change any of these and the artifact is stale.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_CONFIG_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json")


def safe_model_id(model_id: str) -> str:
    """A folder name for a model: ``org--name`` for a Hub id (as the Hub cache spells it), ``local--<folder
    name>-<hash of the absolute path>`` for a local folder (two folders of the same name stay apart)."""
    path = Path(model_id).expanduser()
    if _HUB_ID.match(model_id) and not path.exists():
        return model_id.replace("/", "--")
    resolved = str(path.resolve())
    name = re.sub(r"[^\w.-]", "_", path.resolve().name)[:64] or "root"
    return f"local--{name}-{hashlib.sha256(resolved.encode()).hexdigest()[:12]}"


def folder_key(folder: Path) -> str:
    """``local-<hash>`` of a local model folder: the names, sizes and mtimes of its config and weight files
    (reading mtimes, not contents, keeps this instant for multi-GB weights)."""
    files = [p for p in sorted(Path(folder).rglob("*"))
             if p.is_file() and (p.suffix in _WEIGHT_SUFFIXES or p.name in _CONFIG_FILES)]
    return f"local-{stamp(files)[:16]}"


def _revision_key(model_id: str, revision: str | None) -> str:
    if revision is not None:
        return re.sub(r"[^\w.-]", "_", revision)
    folder = Path(model_id).expanduser()
    if not folder.is_dir():
        # A Hub model without its resolved commit could change under the same key: refuse rather than go stale.
        raise ValueError(f"model {model_id!r} is not a local folder; pass its resolved revision (commit)")
    return folder_key(folder)


def artifact_problem(folder: Path) -> str | None:
    """Why the artifact in ``folder`` cannot be used (missing, unreadable meta, a file whose sha256 differs
    from meta.json), or None when it is complete."""
    try:
        meta = read_meta(folder)
    except ModelLoadError as exc:
        return str(exc)
    files = meta.get("files")
    if not isinstance(files, dict) or meta.get("run") not in files:
        return f"{folder}: meta.json lists no runnable file"
    for name, digest in files.items():
        path = Path(folder) / name
        if not path.is_file():
            return f"{path} is missing"
        if sha256(path) != digest:
            return f"{path} does not match the sha256 in meta.json (corrupted or truncated)"
    return None


def cached_engine(cache_root: Path, model_id: str, revision: str | None, engine: str,
                  build: Callable[[Path], object]) -> Path:
    """The artifact folder of ``engine`` for this model, built by ``build(folder)`` unless a complete one is cached.

    ``revision`` is the resolved commit of a Hub model; None for a local folder, keyed by its files' sizes and
    mtimes. ``build`` writes the artifact into the (empty, temporary) folder it is given, e.g. with
    :func:`export`; the folder is renamed into place once it checks out, so readers never see half an artifact.
    Building runs under an exclusive lock on ``<engine>.lock``: concurrent callers wait and reuse the result.
    """
    if engine == "torch" or not re.fullmatch(r"[\w.-]+", engine):
        raise ValueError(f"engine {engine!r} has no artifact to cache")
    parent = Path(cache_root).expanduser() / safe_model_id(model_id) / _revision_key(model_id, revision)
    parent.mkdir(parents=True, exist_ok=True)
    target = parent / engine
    with open(parent / f"{engine}.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        problem = artifact_problem(target)
        if problem is None:
            return target
        if target.exists():
            logger.warning("rebuilding the %s artifact of %s: %s", engine, model_id, problem)
            shutil.rmtree(target)
        for stale in parent.glob(f".{engine}.tmp-*"):  # left by a builder that died; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        tmp = parent / f".{engine}.tmp-{os.getpid()}"
        tmp.mkdir()
        try:
            build(tmp)
            problem = artifact_problem(tmp)
            if problem is not None:
                raise ModelLoadError(f"building the {engine} artifact of {model_id!r} gave an unusable folder: "
                                     f"{problem}", value=model_id)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target
