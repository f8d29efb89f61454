"""The loopback fake Hub of tests/fake_hub.py, driven by the real huggingface_hub client (no mock on either side).

These tests double as a record of what huggingface_hub 2.4 does against a Hub: which endpoints an upload walks
through, what it retries by itself, and what it needs from its environment (no Xet, not offline).
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from huggingface_hub import CommitOperationAdd, HfApi, HfFileSystem, constants, hf_hub_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile

from tests.fake_hub import FakeHub, fake_hub  # noqa: F401 - the fixture

pytestmark = pytest.mark.timeout(30)

REPO = "acme/results"


def parquet(rows: int, seed: int = 0) -> bytes:
    """A real parquet file of ``rows`` rows, different for each seed."""
    buffer = io.BytesIO()
    table = pa.table({"id": list(range(rows)), "text": [f"row {i} of {seed}" for i in range(rows)]})
    pq.write_table(table, buffer)
    return buffer.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def shards(prefix: str = "data") -> dict[str, bytes]:
    return {f"{prefix}/shard-{i}.parquet": parquet(50 + i, seed=i) for i in range(3)}


def new_repo(hub: FakeHub) -> HfApi:
    api = HfApi(endpoint=hub.url, token=hub.token)
    api.create_repo(REPO, repo_type="dataset", private=True, exist_ok=True)
    return api


def commit(api: HfApi, files: dict[str, bytes], revision: str | None = None, message: str = "Add results") -> str:
    operations = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=data) for path, data in files.items()]
    return api.create_commit(REPO, repo_type="dataset", operations=operations, commit_message=message,
                             revision=revision).oid


def calls(hub: FakeHub, since: int = 0) -> list[str]:
    """Requests after the ``since``-th as "METHOD path", with the repo id and LFS oids written as placeholders."""
    out = []
    for record in hub.requests[since:]:
        path = record.path.replace(REPO, "{repo}")
        out.append(f"{record.method} {path.rsplit('/', 1)[0] + '/{oid}' if '/lfs-upload/' in path else path}")
    return out


def test_create_repo_twice_with_exist_ok_then_read_its_info(fake_hub: FakeHub) -> None:  # noqa: F811
    # given
    api = HfApi(endpoint=fake_hub.url, token=fake_hub.token)

    # when
    url = api.create_repo(REPO, repo_type="dataset", private=True, exist_ok=True)
    again = api.create_repo(REPO, repo_type="dataset", private=True, exist_ok=True)
    info = api.dataset_info(REPO)

    # then: the second call got the Hub's 409, which exist_ok swallows; a new repo holds only .gitattributes
    assert (url.repo_id, url.repo_type, again.repo_id) == (REPO, "dataset", REPO)
    assert [r.status for r in fake_hub.requests] == [200, 409, 200]
    assert info.private is True and info.sha == api.repo_info(REPO, repo_type="dataset", revision="main").sha
    assert [e.path for e in api.list_repo_tree(REPO, repo_type="dataset", recursive=True)] == [".gitattributes"]


def test_one_commit_sends_parquet_through_lfs_and_the_readme_inline(fake_hub: FakeHub) -> None:  # noqa: F811
    # given
    api = new_repo(fake_hub)
    files = {**shards(), "README.md": b"---\nlicense: mit\n---\n# Results\n"}
    start = len(fake_hub.requests)

    # when
    oid = commit(api, files)

    # then: README metadata is validated, preupload sorts LFS from regular files, the LFS batch API hands out
    # upload URLs, each parquet is PUT there then verified, and one ndjson commit names the LFS files by sha256
    flow = calls(fake_hub, start)
    assert flow[:3] == ["POST /api/validate-yaml", "POST /api/datasets/{repo}/preupload/main",
                        "POST /datasets/{repo}.git/info/lfs/objects/batch"]
    assert sorted(flow[3:-1]) == 3 * ["POST /datasets/{repo}.git/info/lfs/objects/verify"] + 3 * [
        "PUT /lfs-upload/dataset/{repo}/{oid}"]
    assert flow[-1] == "POST /api/datasets/{repo}/commit/main"
    assert sorted(u.sha256 for u in fake_hub.lfs_uploads()) == sorted(sha256(d) for d in shards().values())
    assert {path: data for path, data in fake_hub.files(REPO).items() if path in files} == files
    assert [(c.oid, set(c.added)) for c in fake_hub.commits(REPO)] == [(oid, set(files))]


def test_list_repo_tree_gives_sizes_and_lfs_sha256(fake_hub: FakeHub) -> None:  # noqa: F811
    # given
    api = new_repo(fake_hub)
    files = {**shards(), "README.md": b"# Results\n"}
    commit(api, files)

    # when
    tree = list(api.list_repo_tree(REPO, repo_type="dataset", recursive=True))

    # then
    entries = {e.path: e for e in tree if isinstance(e, RepoFile)}
    assert {e.path for e in tree} - set(entries) == {"data"}
    assert {p: (e.size, e.lfs and (e.lfs.sha256, e.lfs.size)) for p, e in entries.items() if p in files} == {
        p: (len(d), (sha256(d), len(d)) if p.endswith(".parquet") else None) for p, d in files.items()}
    assert [e.path for e in api.list_repo_tree(REPO, "data", repo_type="dataset")] == sorted(shards())


def test_listing_a_missing_revision_repo_or_folder_raises_the_hub_errors(fake_hub: FakeHub) -> None:  # noqa: F811
    # given
    api = new_repo(fake_hub)

    # when / then
    with pytest.raises(RevisionNotFoundError):
        list(api.list_repo_tree(REPO, repo_type="dataset", revision="nope"))
    with pytest.raises(RepositoryNotFoundError):
        list(api.list_repo_tree("acme/missing", repo_type="dataset"))
    with pytest.raises(RemoteEntryNotFoundError):
        list(api.list_repo_tree(REPO, "data", repo_type="dataset"))
    with pytest.raises(RevisionNotFoundError):
        api.dataset_info(REPO, revision="nope")


def test_recommitting_known_parquet_under_another_path_puts_no_bytes_again(fake_hub: FakeHub) -> None:  # noqa: F811
    # given: the shards are already in the repo's LFS store
    api = new_repo(fake_hub)
    commit(api, shards("run-1"))
    start = len(fake_hub.requests)

    # when
    commit(api, shards("run-2"), message="Same shards, new place")

    # then: the batch API answered without "actions", so the client went straight to the commit
    assert len(fake_hub.lfs_uploads()) == 3
    assert calls(fake_hub, start) == ["POST /api/datasets/{repo}/preupload/main",
                                      "POST /datasets/{repo}.git/info/lfs/objects/batch",
                                      "POST /api/datasets/{repo}/commit/main"]
    assert fake_hub.files(REPO)["run-2/shard-1.parquet"] == shards()["data/shard-1.parquet"]


def test_a_wrong_token_gets_an_http_error_and_no_token_sees_no_private_repo(fake_hub: FakeHub) -> None:  # noqa: F811
    # given
    new_repo(fake_hub)

    # when
    with pytest.raises(HfHubHTTPError) as wrong:
        HfApi(endpoint=fake_hub.url, token="hf_wrong").dataset_info(REPO)
    with pytest.raises(RepositoryNotFoundError) as anonymous:
        HfApi(endpoint=fake_hub.url, token=False).dataset_info(REPO)

    # then
    assert wrong.value.response.status_code == 401 and not isinstance(wrong.value, RepositoryNotFoundError)
    assert "Invalid credentials in Authorization header" in str(wrong.value)
    assert anonymous.value.response.status_code == 401
    assert fake_hub.requests[-1].headers.get("authorization") is None


def test_a_503_on_the_commit_endpoint_is_not_retried_by_the_client(fake_hub: FakeHub) -> None:  # noqa: F811
    # given
    api = new_repo(fake_hub)
    fake_hub.fail("POST", r"/commit/", status=503)

    # when
    with pytest.raises(HfHubHTTPError) as raised:
        commit(api, shards())

    # then: create_commit POSTs the commit once and raises; a second create_commit (what the product must do)
    # lands without uploading the LFS objects again
    assert raised.value.response.status_code == 503
    assert [r.status for r in fake_hub.requests if "/commit/" in r.path] == [503]
    commit(api, shards())
    assert len(fake_hub.lfs_uploads()) == 3 and len(fake_hub.commits(REPO)) == 1


def test_a_503_on_preupload_is_retried_by_the_client_after_a_second(fake_hub: FakeHub) -> None:  # noqa: F811
    # given
    api = new_repo(fake_hub)
    fake_hub.fail("POST", r"/preupload/", status=503)

    # when
    commit(api, shards())

    # then: preupload, the LFS batch and verify calls and the PUTs go through http_backoff (1 s, 2 s, ... 5 tries)
    assert [r.status for r in fake_hub.requests if "/preupload/" in r.path] == [503, 200]
    assert len(fake_hub.commits(REPO)) == 1


def test_break_after_lets_n_commits_land_then_fails_the_rest_until_healed(fake_hub: FakeHub) -> None:  # noqa: F811
    # given
    api = new_repo(fake_hub)
    fake_hub.break_after(1)

    # when
    commit(api, {"part-0.parquet": parquet(5, seed=0)})
    with pytest.raises(HfHubHTTPError) as raised:
        commit(api, {"part-1.parquet": parquet(5, seed=1)})
    fake_hub.heal()
    commit(api, {"part-1.parquet": parquet(5, seed=1)})

    # then
    assert raised.value.response.status_code == 500
    assert [c.added for c in fake_hub.commits(REPO)] == [("part-0.parquet",), ("part-1.parquet",)]


def test_hf_hub_download_reads_back_lfs_and_regular_files(fake_hub: FakeHub, tmp_path: Path) -> None:  # noqa: F811
    # given
    api = new_repo(fake_hub)
    files = {**shards(), "README.md": b"# Results\n"}
    oid = commit(api, files)

    # when
    shard = hf_hub_download(REPO, "data/shard-2.parquet", repo_type="dataset", endpoint=fake_hub.url,
                            token=fake_hub.token, cache_dir=tmp_path)
    readme = api.hf_hub_download(REPO, "README.md", repo_type="dataset", revision=oid, local_dir=tmp_path / "out")

    # then: the HEAD answers carried ETag / X-Repo-Commit (and X-Linked-* for the LFS file)
    assert Path(shard).read_bytes() == files["data/shard-2.parquet"]
    assert Path(readme).read_bytes() == files["README.md"]
    assert pq.read_table(shard).num_rows == 52
    with pytest.raises(RemoteEntryNotFoundError):
        api.hf_hub_download(REPO, "missing.txt", repo_type="dataset", cache_dir=tmp_path)


def test_a_commit_to_a_new_branch_lands_on_that_branch_only(fake_hub: FakeHub, tmp_path: Path) -> None:  # noqa: F811
    # given
    api = new_repo(fake_hub)
    commit(api, {"v1.parquet": parquet(3)})
    api.create_branch(REPO, repo_type="dataset", branch="v2", exist_ok=True)
    api.create_branch(REPO, repo_type="dataset", branch="v2", exist_ok=True)

    # when
    oid = commit(api, {"v2.parquet": parquet(4)}, revision="v2")

    # then
    refs = {ref.name: ref.target_commit for ref in api.list_repo_refs(REPO, repo_type="dataset").branches}
    assert refs["v2"] == oid != refs["main"]
    assert set(fake_hub.files(REPO, revision="v2")) == {".gitattributes", "v1.parquet", "v2.parquet"}
    assert set(fake_hub.files(REPO)) == {".gitattributes", "v1.parquet"}
    assert api.dataset_info(REPO, revision="v2").sha == oid
    assert fake_hub.commits(REPO)[-1].branch == "v2"
    path = api.hf_hub_download(REPO, "v2.parquet", repo_type="dataset", revision="v2", cache_dir=tmp_path)
    assert Path(path).read_bytes() == parquet(4)


def test_hf_file_system_lists_reads_and_writes(fake_hub: FakeHub, tmp_path: Path) -> None:  # noqa: F811
    # given
    api = new_repo(fake_hub)
    commit(api, shards())
    fs = HfFileSystem(endpoint=fake_hub.url, token=fake_hub.token, skip_instance_cache=True)
    local = tmp_path / "local.parquet"
    local.write_bytes(parquet(7, seed=7))

    # when
    listing = fs.ls(f"datasets/{REPO}/data", detail=False)
    info = fs.info(f"datasets/{REPO}/data/shard-0.parquet")
    with fs.open(f"datasets/{REPO}/data/shard-0.parquet", "rb") as file:
        content = file.read()
    fs.pipe_file(f"datasets/{REPO}/notes/hello.txt", b"hello")
    fs.put_file(str(local), f"datasets/{REPO}/data/shard-9.parquet")

    # then
    assert listing == sorted(f"datasets/{REPO}/{p}" for p in shards())
    assert (info["type"], info["size"]) == ("file", len(shards()["data/shard-0.parquet"]))
    assert content == shards()["data/shard-0.parquet"]
    assert fs.cat(f"datasets/{REPO}/notes/hello.txt") == b"hello"
    assert fake_hub.files(REPO)["data/shard-9.parquet"] == local.read_bytes()


def test_without_disabling_xet_bytes_go_to_xet_but_file_objects_still_use_lfs(
        fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    # given: huggingface_hub as a product process would run it (hf_xet installed, HF_HUB_DISABLE_XET unset)
    api = new_repo(fake_hub)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", False)

    # when
    with pytest.raises(ConnectionError, match="xet-write-token") as xet:
        commit(api, {"a.parquet": parquet(3)})
    operation = CommitOperationAdd(path_in_repo="b.parquet", path_or_fileobj=io.BytesIO(parquet(3)))
    api.create_commit(REPO, repo_type="dataset", operations=[operation], commit_message="From a file object")

    # then: no server answer turns Xet off; only file objects (io.BufferedIOBase) make the client fall back to LFS
    assert "501" in str(xet.value)
    assert [u.sha256 for u in fake_hub.lfs_uploads()] == [sha256(parquet(3))]
    assert set(fake_hub.files(REPO)) == {".gitattributes", "b.parquet"}
    assert fake_hub.files(REPO)["b.parquet"] == parquet(3)


def test_offline_mode_refuses_every_request_before_it_leaves(fake_hub: FakeHub,  # noqa: F811
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # given: what HF_HUB_OFFLINE=1 at import time (tests/conftest.py) leaves in huggingface_hub's constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    # when
    with pytest.raises(OfflineModeIsEnabled):
        HfApi(endpoint=fake_hub.url, token=fake_hub.token).create_repo(REPO, repo_type="dataset")

    # then
    assert fake_hub.requests == []


def test_a_call_without_endpoint_is_refused_instead_of_reaching_huggingface_co(fake_hub: FakeHub) -> None:  # noqa: F811
    # given
    api = HfApi(token=fake_hub.token)

    # when / then
    with pytest.raises(RuntimeError, match="refusing"):
        api.dataset_info(REPO)
