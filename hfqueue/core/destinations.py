"""Where a finished job's results are published besides its output folder: ``output`` in the spec.

``hub://<namespace>/<name>[@<branch>]`` is a Hub dataset repository (see :mod:`hfqueue.sinks.hub`);
anything else is an fsspec URL (``s3://bucket/prefix``, ``hf://datasets/ns/name/dir``,
``file:///abs/path`` or a plain local path) that the shards are copied to (:mod:`hfqueue.sinks.remote`).

Credentials never travel in the URL: the Hub token comes from ``HF_TOKEN`` or the cached login on the
worker, cloud keys from the worker's own environment. A URL carrying a password or a token is refused,
because a spec is stored in Redis, in the manifest and in Flower.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, urlsplit

from hfqueue.core import paths
from hfqueue.errors import InvalidSpecError

HUB = "hub://"
_SECRET_QUERY = re.compile(r"token|secret|key|password|signature|credential", re.IGNORECASE)


@dataclass(frozen=True)
class Destination:
    """A parsed ``output``: a Hub dataset repo (``repo_id``, ``revision``) or an fsspec URL (``protocol``)."""

    url: str
    kind: Literal["hub", "fsspec"]
    repo_id: str | None = None
    revision: str | None = None
    protocol: str | None = None

    @property
    def is_local(self) -> bool:
        """Whether the results are copied to a path on the worker's own disks."""
        return self.kind == "fsspec" and self.protocol in ("file", "local")

    @property
    def local_path(self) -> Path:
        """The local folder of a ``file://`` or plain-path destination."""
        return Path(self.url.removeprefix("file://")).expanduser()


def parse(url: str) -> Destination:
    """Parse an ``output`` URL; :class:`ValueError` saying what is wrong and how to write it.

    >>> parse("hub://my-org/sentiments@v2").repo_id, parse("hub://my-org/sentiments@v2").revision
    ('my-org/sentiments', 'v2')
    >>> parse("s3://bucket/run1").protocol
    's3'
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    url = url.strip()
    if not url:
        raise ValueError("output is empty: give hub://<namespace>/<name> or an fsspec URL")
    if url.startswith(HUB):
        repo, _, revision = url.removeprefix(HUB).partition("@")
        if ":" in repo or repo.count("/") != 1:
            shown = "hub://<redacted>" if ":" in repo else url
            raise ValueError(f"output {shown!r}: write hub://<namespace>/<name>[@<branch>] (no token or password in "
                             "the URL: workers use HF_TOKEN or their cached login)")
        try:
            validate_repo_id(repo)
        except HFValidationError as exc:
            raise ValueError(f"output {url!r}: {repo!r} is not a valid Hub repo id: {exc}") from None
        if "@" in url.removeprefix(HUB) and not revision:
            raise ValueError(f"output {url!r}: give a branch after '@', or drop the '@'")
        return Destination(url, "hub", repo_id=repo, revision=revision or None)
    parts = urlsplit(url)
    protocol = parts.scheme if "://" in url else "file"
    if len(protocol) == 1:  # a Windows drive letter, not a protocol
        protocol = "file"
    if parts.password or (parts.username and protocol not in ("file", "local")) \
            or any(_SECRET_QUERY.search(k) for k in parse_qs(parts.query)):
        raise ValueError(f"output {_redacted(url)!r} carries credentials; remove them: workers use their own "
                         "environment's (HF_TOKEN, AWS_*, ...), because a spec is stored and shown in plain text")
    import fsspec

    if protocol not in fsspec.available_protocols():
        raise ValueError(f"output {url!r}: fsspec knows no protocol {protocol!r}; use hub://<namespace>/<name> or "
                         "a URL like s3://bucket/prefix, hf://datasets/ns/name, or a local path")
    return Destination(url, "fsspec", protocol=protocol)


def check_allowed(dest: Destination, output_urls: Sequence[str], output_root: Path) -> None:
    """Raise :class:`InvalidSpecError` unless this worker or producer may publish to ``dest``.

    A local path must lie under ``output_root`` (as every write does); a remote URL must start with one of
    ``output_urls`` (``HFQ_OUTPUT_URLS``), so an operator can pin outputs to their own org or bucket.
    """
    if dest.is_local:
        paths.check_output_dir(output_root, dest.local_path.absolute())
        return
    if not any(dest.url.startswith(prefix) for prefix in output_urls):
        raise InvalidSpecError(f"output {dest.url!r} is not allowed here: it must start with one of {list(output_urls)}; "
                               "the operator can widen HFQ_OUTPUT_URLS (a JSON list of URL prefixes)", value=dest.url)


def check_installed(dest: Destination) -> None:
    """Raise :class:`InvalidSpecError` when the fsspec backend of ``dest`` is not installed here."""
    if dest.kind != "fsspec":
        return
    import fsspec

    try:
        fsspec.get_filesystem_class(dest.protocol)
    except ImportError as exc:
        raise InvalidSpecError(f"output {dest.url!r} needs the {dest.protocol!r} fsspec backend, which this worker "
                               f"lacks: {exc}", value=dest.url) from None


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    return f"{parts.scheme}://{netloc}{parts.path}" if parts.scheme else "<local path>"
