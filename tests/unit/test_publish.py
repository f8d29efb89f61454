"""Where results may be published, and how publishing fails: pure parts, no worker."""

from __future__ import annotations

from pathlib import Path

import pytest

from hfqueue import PublishError
from hfqueue.core.destinations import parse
from hfqueue.sinks import hub
from hfqueue.sinks.retry import retry

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(("url", "kind", "repo", "revision", "protocol"), [
    ("hub://acme/results", "hub", "acme/results", None, None),
    ("hub://acme/results@v2", "hub", "acme/results", "v2", None),
    ("s3://bucket/run1", "fsspec", None, None, "s3"),
    ("hf://datasets/acme/results/dir", "fsspec", None, None, "hf"),
    ("/srv/results/run1", "fsspec", None, None, "file"),
])
def test_output_urls_parse_into_destinations(url: str, kind: str, repo: str | None, revision: str | None,
                                             protocol: str | None) -> None:
    # given an output URL as a spec names it / when it is parsed
    dest = parse(url)

    # then it names the right kind of destination
    assert (dest.kind, dest.repo_id, dest.revision, dest.protocol) == (kind, repo, revision, protocol)


def test_publishing_to_the_hub_without_a_token_says_how_to_give_one(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # given a worker environment with no HF_TOKEN and no cached login
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_TOKEN_PATH", str(tmp_path / "token"))
    monkeypatch.setattr("huggingface_hub.constants.HF_STORED_TOKENS_PATH", str(tmp_path / "stored_tokens"))

    # when results are to be uploaded
    with pytest.raises(PublishError) as info:
        hub.upload(parse("hub://acme/results"), [], "card", private=True, commit_files=10, message="m")

    # then the error names both ways to give the worker a token
    assert "HF_TOKEN" in str(info.value) and "hf auth login" in str(info.value)


class _Status(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.response = type("R", (), {"status_code": status})()


def test_transient_errors_are_retried_and_refusals_are_not(monkeypatch: pytest.MonkeyPatch) -> None:
    # given calls that fail with a 503 twice, and with a 403
    monkeypatch.setattr("hfqueue.sinks.retry.BACKOFF_S", 0.0)
    answers = iter([_Status(503), _Status(503), "done"])

    def flaky() -> str:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def refused() -> str:
        raise _Status(403)

    # when each is retried / then the transient one succeeds on its third try, the refusal fails at once
    assert retry(flaky, "commit") == "done"
    with pytest.raises(PublishError, match=r"could not commit \(_Status: HTTP 403\)$"):
        retry(refused, "commit")


def test_the_dataset_card_says_how_many_rows_were_reused() -> None:
    from hfqueue.sinks.card import render

    # given the manifest of a job that copied 41 of its 51 rows from the result cache
    manifest = {"job_id": "j", "spec": {"task": "feature-extraction", "model": "m", "dataset": "d.parquet", "split": "train"},
                "rows_total": 51, "rows_done": 51, "rows_failed": 0, "rows_reused": 41, "finished_at": 1.0}
    # when its card is rendered, then the rows line says so; a job that reused nothing says nothing of it
    assert "51 results, 0 errors, 41 reused from earlier runs" in render(manifest, [])
    assert "reused" not in render({**manifest, "rows_reused": 0}, [])
