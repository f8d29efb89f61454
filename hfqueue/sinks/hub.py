"""Publishing a job's shards to a Hub dataset repository, resumably and with few commits.

The repo is created (private unless the spec says otherwise) and the branch too when one is named.
What the branch already holds is listed first: a shard whose SHA-256 matches a file there is not sent
again, so a rerun after an interrupted upload sends only what is missing. Shards go in commits of
``HFQ_HUB_COMMIT_FILES`` files, each retried on transient errors (429, 5xx, dropped connections); the
last commit writes the card and deletes shards an earlier, differently cut run left behind.

The token is never handled here: ``huggingface_hub`` reads ``HF_TOKEN`` or the cached login itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from hfqueue.core.destinations import Destination
from hfqueue.errors import PublishError
from hfqueue.sinks.retry import retry
from hfqueue.sinks.shards import Shard

logger = logging.getLogger(__name__)

_OURS = ("data/", "errors/")  # folders this module owns in the repo


@dataclass
class Report:
    """What an upload did: the files sent, those the remote already had, and the commits made."""

    url: str
    revision: str
    sent: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    commits: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, for the manifest."""
        return {"url": self.url, "revision": self.revision, "sent": len(self.sent), "kept": len(self.kept),
                "commits": self.commits}


def upload(dest: Destination, shards: list[Shard], card: str, *, private: bool, commit_files: int,
           message: str) -> Report:
    """Send ``shards`` and the card to ``dest`` (a ``hub://`` destination); raise :class:`PublishError`."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, get_token

    assert dest.repo_id is not None
    if get_token() is None:
        raise PublishError("no Hugging Face token on this worker: set HF_TOKEN in the worker's environment or run "
                           "`hf auth login` as the worker's user", value=dest.url)
    api = HfApi()
    repo, revision = dest.repo_id, dest.revision or "main"
    report = Report(dest.url, revision)
    retry(lambda: api.create_repo(repo, repo_type="dataset", private=private, exist_ok=True), f"create the Hub repo {repo}")
    if dest.revision:
        retry(lambda: api.create_branch(repo, repo_type="dataset", branch=revision, exist_ok=True),
               f"create branch {revision} of {repo}")
    remote = retry(lambda: _listing(api, repo, revision), f"list {repo}@{revision}")
    missing = [s for s in shards if remote.get(s.path_in_repo) != s.sha256]
    report.kept = [s.path_in_repo for s in shards if remote.get(s.path_in_repo) == s.sha256]
    for start in range(0, len(missing), commit_files):
        batch = missing[start:start + commit_files]
        ops = [CommitOperationAdd(path_in_repo=s.path_in_repo, path_or_fileobj=str(s.local)) for s in batch]
        note = f"{message}: shards {start + 1}-{start + len(batch)} of {len(missing)} to send"
        info = retry(lambda ops=ops, note=note: api.create_commit(repo, ops, commit_message=note,  # type: ignore[misc]
                                                                   repo_type="dataset", revision=revision), note)
        report.sent += [s.path_in_repo for s in batch]
        report.commits.append(info.oid)
        logger.info("%s: committed %d shards to %s@%s", message, len(batch), repo, revision)
    wanted = {s.path_in_repo for s in shards}
    stale = [p for p in remote if p.startswith(_OURS) and p not in wanted]
    final = [CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode()),
             *[CommitOperationDelete(path_in_repo=p) for p in stale]]
    info = retry(lambda: api.create_commit(repo, final, commit_message=f"{message}: dataset card",
                                            repo_type="dataset", revision=revision), f"commit the card to {repo}@{revision}")
    report.commits.append(info.oid)
    return report


def _listing(api: Any, repo: str, revision: str) -> dict[str, str | None]:
    """Path -> SHA-256 of the branch's LFS files (None for small files stored in git)."""
    from huggingface_hub.errors import EntryNotFoundError, RevisionNotFoundError
    from huggingface_hub.hf_api import RepoFile

    out: dict[str, str | None] = {}
    try:
        for entry in api.list_repo_tree(repo, repo_type="dataset", revision=revision, recursive=True):
            if isinstance(entry, RepoFile):
                out[entry.path] = entry.lfs.sha256 if entry.lfs else None
    except (EntryNotFoundError, RevisionNotFoundError):  # a repo without a commit yet
        return {}
    return out
