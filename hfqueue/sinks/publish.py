"""Publishing a finished job's results to its ``output``: shards, card, upload, each step resumable.

Called by whoever finalizes the job (the worker that counted its last chunk, or ``hfq resume``) while
the job is ``finalizing``. Everything needed is in the output folder, so a publish that died half way
is simply run again.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hfqueue.core.config import Settings
from hfqueue.core.destinations import check_allowed, check_installed, parse
from hfqueue.errors import InvalidSpecError, PublishError
from hfqueue.sinks import card, hub, remote, shards
from hfqueue.sinks.local import read_manifest

logger = logging.getLogger(__name__)


def check(url: str, settings: Settings) -> None:
    """Raise :class:`InvalidSpecError` unless these settings allow publishing to ``url`` and can reach it."""
    try:
        dest = parse(url)
    except ValueError as exc:
        raise InvalidSpecError(str(exc), value=url) from None
    check_allowed(dest, settings.output_urls, settings.output_root)
    check_installed(dest)


def publish(out_dir: Path, settings: Settings) -> dict[str, Any]:
    """Send the job in ``out_dir`` to its spec's ``output``; return what was sent, for the manifest."""
    manifest = read_manifest(out_dir)
    spec = manifest["spec"]
    try:
        check(spec["output"], settings)  # the worker's own settings: the wire is not trusted
    except InvalidSpecError as exc:
        raise PublishError(f"this worker refuses the output: {exc}", value=spec["output"]) from None
    dest = parse(spec["output"])
    files = shards.build(out_dir, int(settings.hub_shard_mb * 1024 * 1024))
    text = card.render(manifest, files)
    message = f"hfqueue job {manifest['job_id']}"
    if dest.kind == "hub":
        report = hub.upload(dest, files, text, private=bool(spec.get("output_private", True)),
                            commit_files=settings.hub_commit_files, message=message)
    else:
        report = remote.upload(dest, files, text)
    logger.info("%s published to %s: %d files sent, %d already there", message, dest.url, len(report.sent),
                len(report.kept))
    return report.as_dict()
