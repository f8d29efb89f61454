"""Publishing a job's shards to an fsspec URL: a local path, ``s3://``, ``gs://``, ``hf://`` and the rest.

The same layout as on the Hub (``data/``, ``errors/``, ``README.md``). A file already at the destination
with the same size is not sent again, so a rerun after an interruption copies only what is missing;
each file is written whole by the backend (local files through a temporary name). Credentials are the
backend's own: the worker's environment (``AWS_*``, ``GOOGLE_APPLICATION_CREDENTIALS``, ``HF_TOKEN``).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from hfqueue.core.destinations import Destination
from hfqueue.errors import PublishError
from hfqueue.files import atomic_path
from hfqueue.sinks.hub import Report
from hfqueue.sinks.retry import retry, short
from hfqueue.sinks.shards import Shard

logger = logging.getLogger(__name__)


def upload(dest: Destination, shards: list[Shard], card: str) -> Report:
    """Copy ``shards`` and the card under ``dest``; raise :class:`PublishError` saying what failed."""
    from fsspec.core import url_to_fs

    try:
        fs, root = url_to_fs(str(dest.local_path.absolute()) if dest.is_local else dest.url)
    except (ImportError, ValueError) as exc:
        raise PublishError(f"cannot open output {dest.url!r}: {short(exc)}", value=dest.url) from exc
    report = Report(dest.url, "")
    root = root.rstrip("/")
    for shard in shards:
        target = f"{root}/{shard.path_in_repo}"
        if _size(fs, target) == shard.size:
            report.kept.append(shard.path_in_repo)
            continue
        local = str(shard.local)
        retry(lambda t=target, f=local: _put(fs, f, t, dest.is_local), f"copy {shard.path_in_repo} to {dest.url}")
        report.sent.append(shard.path_in_repo)
    with tempfile.NamedTemporaryFile("w", suffix=".md", delete=False) as fh:
        fh.write(card)
    try:
        retry(lambda: _put(fs, fh.name, f"{root}/README.md", dest.is_local), f"write README.md to {dest.url}")
    finally:
        os.unlink(fh.name)
    logger.info("copied %d shards to %s (%d were there already)", len(report.sent), dest.url, len(report.kept))
    return report


def _size(fs: object, path: str) -> int | None:
    try:
        return int(fs.size(path))  # type: ignore[attr-defined]
    except (FileNotFoundError, OSError):
        return None


def _put(fs: object, local: str, target: str, is_local: bool) -> None:
    parent = target.rsplit("/", 1)[0]
    fs.makedirs(parent, exist_ok=True)  # type: ignore[attr-defined]
    if is_local:
        # A reader of a local folder must never see half a file: copy beside it, then rename.
        with atomic_path(Path(target)) as tmp:
            shutil.copyfile(local, tmp)
        return
    fs.put_file(local, target)  # type: ignore[attr-defined]
