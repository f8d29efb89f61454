"""A loopback fake of the Hugging Face Hub, for tests that upload datasets with the real ``huggingface_hub``.

It plays the endpoints ``huggingface_hub`` 2.4 calls to create a repo and a branch, commit files (small text inline,
large or binary files through the git-LFS *basic* transfer), and list and read them back (``list_repo_tree``,
``repo_info``, ``hf_hub_download``, ``HfFileSystem``). State lives in memory; every request is recorded; faults can
be injected. Standard library only: a ``ThreadingHTTPServer`` on 127.0.0.1 in a daemon thread.

Use it from a test module with ``from tests.fake_hub import FakeHub, fake_hub  # noqa: F401``, then::

    def test_upload(fake_hub: FakeHub) -> None:
        api = HfApi(endpoint=fake_hub.url, token=fake_hub.token)
        api.create_repo("acme/results", repo_type="dataset", private=True)
        ...
        assert fake_hub.files("acme/results")["data/part-0.parquet"] == expected

What the *client* must do, because no server answer can (``use_fake_hub`` does it for this process; ``env()`` gives
the variables for a child process):

* no Xet: with ``hf_xet`` installed, ``huggingface_hub`` sends every file given as a path or bytes through Xet,
  decided client-side from ``constants.HF_HUB_DISABLE_XET`` alone (the preupload and LFS batch answers have no say).
  This fake does not speak Xet (its ``xet-*-token`` endpoints answer 501), so the client needs ``HF_HUB_DISABLE_XET=1``
  before import, or ``constants.HF_HUB_DISABLE_XET = True`` (file objects, ``io.BufferedIOBase``, take LFS anyway);
* not offline: ``HF_HUB_OFFLINE`` is read into ``constants`` at import (tests/conftest.py sets it), and then
  refuses every request before it is sent;
* ``endpoint=fake.url`` on ``HfApi``, ``hf_hub_download`` and ``HfFileSystem``: ``HF_ENDPOINT`` is read at import.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import socket
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

__all__ = ["Commit", "FakeHub", "LfsUpload", "Recorded", "fake_hub", "use_fake_hub"]

LFS_SUFFIXES = (".parquet", ".arrow", ".bin", ".safetensors", ".pt", ".npy", ".zip", ".gz", ".png", ".jpg")
LFS_MIN_SIZE = 10 * 1024 * 1024  # the Hub takes no regular (non-LFS) file from 10 MB on
GITATTRIBUTES = b"".join(b"*%s filter=lfs diff=lfs merge=lfs -text\n" % s.encode() for s in LFS_SUFFIXES)
PLURAL = {"models": "model", "datasets": "dataset", "spaces": "space"}
PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}  # of the non-API URLs
LFS_PUT_WARNING = r"Use 'content=<\.\.\.>' to upload raw bytes/text content\."
Reply = tuple[int, dict[str, str], bytes]


@dataclass(frozen=True)
class Recorded:
    """One request the fake answered; header names are lower-cased."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body_length: int
    status: int


@dataclass(frozen=True)
class Commit:
    """One commit made through the commit endpoint."""

    oid: str
    message: str
    branch: str
    added: tuple[str, ...]
    deleted: tuple[str, ...]


@dataclass(frozen=True)
class LfsUpload:
    """One LFS object whose bytes were PUT to the fake."""

    repo_id: str
    sha256: str
    size: int


@dataclass(frozen=True)
class _Blob:
    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def pointer(self) -> bytes:
        return b"version https://git-lfs.github.com/spec/v1\noid sha256:%s\nsize %d\n" % (
            self.sha256.encode(), len(self.data))

    @property
    def git_oid(self) -> str:  # git stores the pointer file of an LFS blob
        content = self.pointer if self.lfs else self.data
        return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)  # branch -> head commit oid
    snapshots: dict[str, dict[str, _Blob]] = field(default_factory=dict)  # commit oid -> files
    lfs: dict[str, bytes] = field(default_factory=dict)  # the LFS store, per repo as on the Hub
    commits: list[Commit] = field(default_factory=list)

    def resolve(self, revision: str) -> str | None:
        """The commit a branch name or a commit oid points to."""
        return self.branches.get(revision) or (revision if revision in self.snapshots else None)

    def add_commit(self, branch: str, files: dict[str, _Blob]) -> str:
        oid = secrets.token_hex(20)
        self.snapshots[oid], self.branches[branch] = files, oid
        return oid


def _json(status: int, obj: Any, headers: dict[str, str] | None = None) -> Reply:
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(obj).encode()


def _error(status: int, message: str, code: str | None = None) -> Reply:
    # huggingface_hub picks its exception class from X-Error-Code and quotes X-Error-Message.
    return _json(status, {"error": message}, {"X-Error-Message": message} | ({"X-Error-Code": code} if code else {}))


def _entry(path: str, blob: _Blob | None) -> dict[str, Any]:
    """A tree / paths-info entry shaped like the Hub's; a folder when ``blob`` is None."""
    if blob is None:
        return {"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "size": 0, "path": path}
    entry: dict[str, Any] = {"type": "file", "oid": blob.git_oid, "size": len(blob.data), "path": path}
    if blob.lfs:
        entry["lfs"] = {"oid": blob.sha256, "size": len(blob.data), "pointerSize": len(blob.pointer)}
    return entry


def _folders(files: dict[str, _Blob]) -> set[str]:
    return {"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)}


class FakeHub:
    """The fake Hub, serving from construction to ``close()``; a context manager.

    ``url`` and ``token`` are what a client needs. A request with another token gets the Hub's 401; one with no
    token may only read public repos (a private one answers 401 RepoNotFound, as on the Hub).
    """

    user = "fake-user"  # the namespace of a repo created without one

    def __init__(self) -> None:
        self.token = "hf_" + secrets.token_urlsafe(24)
        self.requests: list[Recorded] = []
        self._lock = threading.RLock()
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._uploads: list[LfsUpload] = []
        self._faults: list[list[Any]] = []  # [method, compiled regex, status, times left]
        self._commits_left: int | None = None  # None: commits never break
        self._connections: set[socket.socket] = set()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="fake-hub", daemon=True)
        self._thread.start()

    def __enter__(self) -> FakeHub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving, and end the connections clients keep alive so that their handler threads end too."""
        self._server.shutdown()
        with self._lock:
            for connection in self._connections:
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self._server.server_close()
        self._thread.join(5)

    def env(self) -> dict[str, str]:
        """Environment variables for a child process whose huggingface_hub must use this fake."""
        return {"HF_ENDPOINT": self.url, "HF_TOKEN": self.token, "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0"}

    def fail(self, method: str, path_regex: str, status: int = 503, times: int = 1) -> None:
        """Answer ``status`` to the next ``times`` requests of ``method`` ("*": any) whose path matches."""
        with self._lock:
            self._faults.append([method.upper(), re.compile(path_regex), status, times])

    def break_after(self, n_commits: int) -> None:
        """Let the next ``n_commits`` commits land, then answer 500 to every later one (an upload cut half way)."""
        with self._lock:
            self._commits_left = n_commits

    def heal(self) -> None:
        """Clear every injected fault."""
        with self._lock:
            self._faults.clear()
            self._commits_left = None

    def lfs_uploads(self) -> list[LfsUpload]:
        """The LFS objects PUT, in order: an object the batch API called known is never PUT."""
        with self._lock:
            return list(self._uploads)

    def commits(self, repo_id: str, repo_type: str = "dataset") -> list[Commit]:
        """Commits made through the API, oldest first (not the initial commit of a new repo)."""
        with self._lock:
            return list(self._repos[(repo_type, repo_id)].commits)

    def is_private(self, repo_id: str, repo_type: str = "dataset") -> bool:
        """Whether the repo was created private."""
        with self._lock:
            return self._repos[(repo_type, repo_id)].private

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "dataset") -> dict[str, bytes]:
        """Path -> bytes at a branch or commit, with the ``.gitattributes`` a new repo gets, as on the Hub."""
        with self._lock:
            repo = self._repos[(repo_type, repo_id)]
            oid = repo.resolve(revision)
            if oid is None:
                raise KeyError(f"no revision {revision!r} in {repo_id}")
            return {path: blob.data for path, blob in repo.snapshots[oid].items()}

    # -- request handling: one request at a time, under the lock ----------------------------------------------------
    def _answer(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> Reply:
        path, query = urlsplit(raw_path).path, parse_qs(urlsplit(raw_path).query)
        with self._lock:
            reply = self._injected(method, path)
            if reply is None:
                try:
                    reply = self._route(method, path, query, headers, body)
                except (ValueError, KeyError, StopIteration) as exc:  # a body this fake cannot read
                    reply = _error(400, f"Bad request: {exc!r}")
            self.requests.append(Recorded(method, path, query, headers, len(body), reply[0]))
        return reply

    def _injected(self, method: str, path: str) -> Reply | None:
        for fault in self._faults:
            if fault[3] > 0 and fault[0] in ("*", method) and fault[1].search(path):
                fault[3] -= 1
                return _error(fault[2], f"Injected fault {fault[2]}")
        return None

    def _auth(self, headers: dict[str, str], in_repo: bool, public_read: bool) -> Reply | None:
        given = headers.get("authorization")
        if given == f"Bearer {self.token}" or (given is None and public_read):
            return None
        if given is not None:  # the Hub's words, which keep the client from calling it RepositoryNotFoundError
            return _error(401, "Invalid credentials in Authorization header")
        if in_repo:  # a private repo looks missing, so the client raises RepositoryNotFoundError
            return _error(401, "Repository not found", "RepoNotFound")
        return _error(401, "Invalid username or password.")

    def _route(self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str],
               body: bytes) -> Reply:
        if m := re.fullmatch(r"/lfs-upload/(\w+)/([^/]+/[^/]+)/([0-9a-f]{64})", path):
            return self._lfs_put(m[1], m[2], m[3], query, body)  # signed URL: no token, as a presigned S3 URL
        if path in ("/api/repos/create", "/api/validate-yaml", "/api/whoami-v2"):
            if denied := self._auth(headers, in_repo=False, public_read=False):
                return denied
            if path == "/api/repos/create":
                return self._create_repo(json.loads(body))
            if path == "/api/validate-yaml":  # no warnings: the client would warnings.warn them
                return _json(200, {"errors": [], "warnings": []})
            return _json(200, {"type": "user", "name": self.user, "auth": {"type": "access_token"}})
        if m := re.fullmatch(r"/api/(models|datasets|spaces)/([^/]+/[^/]+)(?:/(.*))?", path):
            repo_type, repo_id, rest = PLURAL[m[1]], m[2], m[3] or ""
        elif m := re.fullmatch(r"/(?:(datasets|spaces)/)?([^/]+/[^/]+)\.git/info/lfs/objects/(batch|verify)", path):
            repo_type, repo_id, rest = PLURAL[m[1] or "models"], m[2], "lfs-" + m[3]
        elif m := re.fullmatch(r"/(?:(datasets|spaces)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
            repo_type, repo_id, rest = PLURAL[m[1] or "models"], m[2], "resolve"
        else:
            return _error(404, f"The fake Hub has no route for {method} {path}")
        repo = self._repos.get((repo_type, repo_id))
        reading = method in ("GET", "HEAD") or rest.startswith("paths-info/")
        if denied := self._auth(headers, in_repo=True, public_read=reading and repo is not None and not repo.private):
            return denied
        if repo is None:
            return _error(404, "Repository not found", "RepoNotFound")
        if rest == "resolve":
            return self._resolve(repo, unquote(m[3]), unquote(m[4]), headers.get("range"))
        if rest == "lfs-batch":
            return self._lfs_batch(repo, json.loads(body))
        if rest == "lfs-verify":
            obj = json.loads(body)
            known = len(repo.lfs.get(obj["oid"], b"")) == obj["size"] > 0
            return _json(200, {"success": True}) if known else _error(404, "Object not found")
        if rest == "refs":
            branches = [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": oid} for b, oid in repo.branches.items()]
            return _json(200, {"branches": branches, "converts": [], "tags": [], "pullRequests": []})
        # Otherwise rest is "" or "<verb>/<revision>[/<path>]", the revision quoted into one segment.
        verb, _, arg = rest.partition("/")
        revision, _, sub_path = arg.partition("/")
        revision = unquote(revision) if arg else "main"
        if verb.startswith("xet-"):
            return _error(501, "This fake Hub does not speak Xet: give the client HF_HUB_DISABLE_XET=1")
        if verb == "branch" and method == "POST":
            return self._create_branch(repo, revision, json.loads(body or b"{}").get("startingPoint"))
        if verb == "commit" and method == "POST":
            return self._commit(repo, revision, body)
        oid = repo.resolve(revision)
        if oid is None:
            return _error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        files = repo.snapshots[oid]
        if verb in ("", "revision") and method == "GET":
            return _json(200, {"_id": repo_id, "id": repo_id, "author": repo_id.split("/")[0], "sha": oid,
                               "private": repo.private, "disabled": False, "gated": False, "tags": [],
                               "downloads": 0, "likes": 0, "lastModified": _now(), "createdAt": _now(),
                               "siblings": [{"rfilename": p} for p in sorted(files)]})
        if verb == "tree" and method == "GET":
            return self._tree(files, unquote(sub_path), query.get("recursive", [""])[0].lower() in ("true", "1"))
        if verb == "paths-info" and method == "POST":  # a form: paths=a&paths=b&expand=...
            folders = _folders(files)
            return _json(200, [_entry(p, files.get(p)) for p in parse_qs(body.decode()).get("paths", [])
                               if p in files or p in folders])
        if verb == "preupload" and method == "POST":
            return _json(200, {"files": [_upload_mode(f, files.get(f["path"])) for f in json.loads(body)["files"]]})
        return _error(404, f"The fake Hub has no route for {method} {path}")

    def _create_repo(self, payload: dict[str, Any]) -> Reply:
        repo_id = f"{payload.get('organization') or self.user}/{payload['name']}"
        repo_type = payload.get("type") or "model"
        url = f"{self.url}/{PREFIX[repo_type]}{repo_id}"
        if (repo_type, repo_id) in self._repos:  # create_repo(exist_ok=True) expects exactly this 409
            return _json(409, {"error": f"You already created this {repo_type} repo", "url": url})
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        repo = self._repos[(repo_type, repo_id)] = _Repo(repo_type, repo_id, private)
        repo.add_commit("main", {".gitattributes": _Blob(GITATTRIBUTES, lfs=False)})
        return _json(200, {"url": url, "name": repo_id, "id": secrets.token_hex(12)})

    def _create_branch(self, repo: _Repo, branch: str, starting_point: str | None) -> Reply:
        if branch in repo.branches:
            return _error(409, "Reference already exists")
        oid = repo.resolve(starting_point or "main")
        if oid is None:
            return _error(404, f"Invalid rev id: {starting_point}", "RevisionNotFound")
        repo.branches[branch] = oid
        return _json(200, {})

    def _tree(self, files: dict[str, _Blob], folder: str, recursive: bool) -> Reply:
        folders = _folders(files)
        if folder and folder not in folders:
            return _error(404, f"{folder} does not exist on this revision", "EntryNotFound")
        prefix = folder + "/" if folder else ""
        return _json(200, [_entry(p, files.get(p)) for p in sorted(folders | set(files))
                           if p.startswith(prefix) and (recursive or "/" not in p[len(prefix):])])

    def _signature(self, repo: _Repo, oid: str) -> str:
        return hmac.new(self.token.encode(), f"{repo.repo_id}/{oid}".encode(), "sha256").hexdigest()

    def _lfs_batch(self, repo: _Repo, payload: dict[str, Any]) -> Reply:
        """git-lfs batch API, basic transfer: a known object gets no "actions", so the client skips its upload."""
        objects = []
        for obj in {o["oid"]: o for o in payload["objects"]}.values():
            answer: dict[str, Any] = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in repo.lfs:  # no "header" with "chunk_size": that would ask for a multipart upload
                upload = f"{self.url}/lfs-upload/{repo.repo_type}/{repo.repo_id}/{obj['oid']}"
                verify = f"{self.url}/{PREFIX[repo.repo_type]}{repo.repo_id}.git/info/lfs/objects/verify"
                answer["actions"] = {"upload": {"href": f"{upload}?sig={self._signature(repo, obj['oid'])}"},
                                     "verify": {"href": verify}}
            objects.append(answer)
        return _json(200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"})

    def _lfs_put(self, repo_type: str, repo_id: str, oid: str, query: dict[str, list[str]], body: bytes) -> Reply:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None or query.get("sig", [""])[0] != self._signature(repo, oid):
            return _error(403, "Bad signature")
        if hashlib.sha256(body).hexdigest() != oid:
            return _error(400, "Content does not match its sha256")
        repo.lfs[oid] = body
        self._uploads.append(LfsUpload(repo_id, oid, len(body)))
        return 200, {"ETag": f'"{hashlib.md5(body).hexdigest()}"'}, b""

    def _commit(self, repo: _Repo, branch: str, body: bytes) -> Reply:
        """The ndjson commit: a header line, then one line per file (inline base64, or an LFS oid) or deletion."""
        if branch not in repo.branches:
            return _error(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        if self._commits_left is not None and self._commits_left <= 0:
            return _error(500, "Internal Error - We're working hard to fix this as soon as possible!")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next(line["value"] for line in lines if line["key"] == "header")
        if header.get("parentCommit") not in (None, repo.branches[branch]):
            return _error(412, "A commit has happened since. Please refresh and try again.")
        files, added, deleted = dict(repo.snapshots[repo.branches[branch]]), [], []
        for key, value in ((line["key"], line["value"]) for line in lines):
            if key == "file":
                files[value["path"]] = _Blob(base64.b64decode(value["content"]), lfs=False)
            elif key == "lfsFile" and value["oid"] in repo.lfs:
                files[value["path"]] = _Blob(repo.lfs[value["oid"]], lfs=True)
            elif key == "lfsFile":
                return _error(422, f"Your push was rejected because an LFS pointer pointed to a file that does not "
                                   f"exist: {value['path']}")
            elif key in ("deletedFile", "deletedFolder"):
                gone = [p for p in files if p == value["path"] or p.startswith(value["path"].rstrip("/") + "/")]
                if not gone:
                    return _error(404, "A file with this name doesn't exist", "EntryNotFound")
                deleted += gone
                for p in gone:
                    del files[p]
            if key in ("file", "lfsFile"):
                added.append(value["path"])
        oid = repo.add_commit(branch, files)
        repo.commits.append(Commit(oid, header["summary"], branch, tuple(added), tuple(deleted)))
        if self._commits_left is not None:
            self._commits_left -= 1
        url = f"{self.url}/{PREFIX[repo.repo_type]}{repo.repo_id}/commit/{oid}"
        return _json(200, {"success": True, "commitOid": oid, "commitUrl": url, "commitMessage": header["summary"],
                           "hookOutput": "", "pullRequestUrl": None})

    def _resolve(self, repo: _Repo, revision: str, path: str, byte_range: str | None) -> Reply:
        oid = repo.resolve(revision)
        if oid is None:
            return _error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        blob = repo.snapshots[oid].get(path)
        if blob is None:
            status, headers, body = _error(404, "Entry not found", "EntryNotFound")
            return status, headers | {"X-Repo-Commit": oid}, body
        # Served from here, where the Hub redirects LFS files to a CDN; the client checks ETag and X-Repo-Commit,
        # and for LFS files takes X-Linked-Etag (the sha256) and X-Linked-Size over ETag and Content-Length.
        out = {"ETag": f'"{blob.git_oid}"', "X-Repo-Commit": oid, "Accept-Ranges": "bytes",
               "Content-Type": "application/octet-stream"}
        if blob.lfs:
            out |= {"X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": str(len(blob.data))}
        if m := re.fullmatch(r"bytes=(\d*)-(\d*)", byte_range or ""):  # HfFileSystem reads blocks
            size = len(blob.data)
            start = int(m[1]) if m[1] else max(size - int(m[2] or 0), 0)
            end = min(int(m[2]), size - 1) if m[1] and m[2] else size - 1
            return 206, out | {"Content-Range": f"bytes {start}-{end}/{size}"}, blob.data[start:end + 1]
        return 200, out, blob.data


def _upload_mode(file: dict[str, Any], existing: _Blob | None) -> dict[str, Any]:
    """Preupload: the Hub sends to LFS what .gitattributes tracks, anything from 10 MB on, and binary samples.

    ``oid`` is what the client compares to skip an unchanged file: the sha256 for LFS, the git oid otherwise.
    """
    lfs = file["path"].endswith(LFS_SUFFIXES) or file["size"] >= LFS_MIN_SIZE or b"\0" in base64.b64decode(
        file["sample"])
    remote = None if existing is None else existing.sha256 if existing.lfs else existing.git_oid
    return {"path": file["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": remote}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _handler_class(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as httpx pools connections

        def setup(self) -> None:
            super().setup()
            with hub._lock:
                hub._connections.add(self.connection)

        def finish(self) -> None:
            with hub._lock:
                hub._connections.discard(self.connection)
            super().finish()

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return b"".join(chunks)

        def _serve(self) -> None:
            headers = {name.lower(): value for name, value in self.headers.items()}
            status, out, body = hub._answer(self.command, self.path, headers, self._body())
            self.send_response(status)
            for name, value in out.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keeps test output quiet
            pass

    return Handler


@pytest.fixture
def fake_hub(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """A running FakeHub, with this process's huggingface_hub pointed at it (see ``use_fake_hub``)."""
    with FakeHub() as hub, use_fake_hub(hub, monkeypatch, tmp_path_factory.mktemp("hf-cache")):
        yield hub


@contextmanager
def use_fake_hub(hub: FakeHub, monkeypatch: pytest.MonkeyPatch, cache_dir: Path) -> Iterator[None]:
    """Set this process's huggingface_hub up for ``hub`` while inside (``monkeypatch`` undoes the constants).

    Leaves offline mode and turns Xet off (both read from the environment at import: the constants are patched),
    puts the download cache in ``cache_dir``, lets the LFS PUT's DeprecationWarning pass, and installs an HTTP
    client that refuses any host but 127.0.0.1, so that a call missing ``endpoint=`` fails instead of going out.
    """
    from huggingface_hub import constants
    from huggingface_hub.utils import _http

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache_dir))

    def loopback_only(request: Any) -> None:
        if request.url.host != "127.0.0.1":
            raise RuntimeError(f"FakeHub: refusing {request.method} {request.url} (pass endpoint={hub.url})")
        _http.hf_request_event_hook(request)

    def client() -> Any:
        http = getattr(_http, "httpx2", None) or _http.httpx  # huggingface_hub 2 uses httpx2, 1.x httpx
        return http.Client(event_hooks={"request": [loopback_only]}, follow_redirects=True, timeout=None)

    previous: Callable[[], Any] = _http._GLOBAL_CLIENT_FACTORY
    _http.set_client_factory(client)
    try:
        with warnings.catch_warnings():
            # huggingface_hub PUTs LFS bytes with httpx2's deprecated `data=`: harmless, fatal under -W error.
            warnings.filterwarnings("ignore", LFS_PUT_WARNING, DeprecationWarning)
            yield
    finally:
        _http.set_client_factory(previous)  # closes the loopback client and its pooled connections
