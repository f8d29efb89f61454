"""OpenAI Batch output and error lines: the exact body shapes, choice order, usage sums, base64 vectors."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import numpy as np
import pytest

from hfqueue.openai_batch.requests import Request, parse_lines
from hfqueue.openai_batch.responses import encode_base64, failed_line, invalid_line, output_line

pytestmark = pytest.mark.timeout(30)

CREATED = 1_700_000_000


def request(url: str, **body: Any) -> Request:
    """The request parsed from one line for ``url`` with this body."""
    reqs, errs = parse_lines([json.dumps({"custom_id": "req-1", "method": "POST", "url": url, "body": body})])
    assert errs == [], errs
    return reqs[0]


def generated(text: str, reason: str = "stop", prompt: int = 5, completion: int = 3) -> dict[str, Any]:
    """A text-generation result row."""
    return {"generated_text": text, "finish_reason": reason, "prompt_tokens": prompt, "completion_tokens": completion}


def assert_envelope(line: dict[str, Any], custom_id: str = "req-1") -> dict[str, Any]:
    """Check the batch line around a 200 response; return the response body."""
    assert set(line) == {"id", "custom_id", "response", "error"}
    assert re.fullmatch(r"batch_req_[0-9a-f]{24}", line["id"])
    assert line["custom_id"] == custom_id and line["error"] is None
    assert set(line["response"]) == {"status_code", "request_id", "body"}
    assert line["response"]["status_code"] == 200
    assert re.fullmatch(r"[0-9a-f]{32}", line["response"]["request_id"])
    json.dumps(line)  # the caller writes it as a JSON line
    body: dict[str, Any] = line["response"]["body"]
    return body


def test_chat_body_has_openai_shape_with_prompt_counted_once() -> None:
    # given a chat request with two choices and their results
    req = request("/v1/chat/completions", model="org/chat", n=2, temperature=0.7,
                  messages=[{"role": "user", "content": "hi"}])
    results = [generated("Hello!", "stop", 9, 2), generated("Hi there, how", "length", 9, 4)]

    # when its output line is built
    body = assert_envelope(output_line(req, results, CREATED))

    # then the body is a chat.completion with one choice per result and usage as OpenAI counts it
    assert re.fullmatch(r"chatcmpl-[0-9a-f]+", body.pop("id"))
    assert body == {
        "object": "chat.completion", "created": CREATED, "model": "org/chat",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Hello!", "refusal": None}, "logprobs": None,
             "finish_reason": "stop"},
            {"index": 1, "message": {"role": "assistant", "content": "Hi there, how", "refusal": None},
             "logprobs": None, "finish_reason": "length"},
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15},
        "system_fingerprint": None,
    }


def test_completions_body_indexes_choices_prompt_major_and_counts_each_prompt_once() -> None:
    # given two prompts with two choices each, results in row order (prompt i copy j is row i * n + j)
    req = request("/v1/completions", model="org/lm", prompt=["A", "BB"], n=2)
    results = [generated("a0", prompt=1, completion=1), generated("a1", "length", 1, 16),
               generated("b0", prompt=2, completion=5), generated("b1", prompt=2, completion=7)]

    # when its output line is built
    body = assert_envelope(output_line(req, results, CREATED))

    # then choices keep that order as their index, and each prompt's tokens count once
    assert re.fullmatch(r"cmpl-[0-9a-f]+", body.pop("id"))
    assert body == {
        "object": "text_completion", "created": CREATED, "model": "org/lm",
        "choices": [{"text": "a0", "index": 0, "logprobs": None, "finish_reason": "stop"},
                    {"text": "a1", "index": 1, "logprobs": None, "finish_reason": "length"},
                    {"text": "b0", "index": 2, "logprobs": None, "finish_reason": "stop"},
                    {"text": "b1", "index": 3, "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 29, "total_tokens": 32},
    }


def test_embeddings_body_lists_float_vectors_in_input_order_with_summed_usage() -> None:
    # given two inputs and their results (a list, and a numpy row as the worker returns it)
    req = request("/v1/embeddings", model="org/emb", input=["a", "b c"])
    results = [{"embedding": [0.5, -0.25], "input_tokens": 3},
               {"embedding": np.array([0.125, 1.0], dtype=np.float32), "input_tokens": 4}]

    # when its output line is built
    body = assert_envelope(output_line(req, results, CREATED))

    # then the body is an embeddings list of plain floats
    assert body == {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.5, -0.25]},
                 {"object": "embedding", "index": 1, "embedding": [0.125, 1.0]}],
        "model": "org/emb",
        "usage": {"prompt_tokens": 7, "total_tokens": 7},
    }
    assert all(type(x) is float for d in body["data"] for x in d["embedding"])


def test_base64_embeddings_are_little_endian_float32_and_round_trip() -> None:
    # given a base64 embeddings request and vectors with values float32 cannot hold exactly
    req = request("/v1/embeddings", model="org/emb", input=["x", "y"], encoding_format="base64")
    vectors = [[0.1, -2.5, 3.0e-5], np.array([1.0, 0.0, -1.0], dtype=np.float32)]
    results = [{"embedding": v, "input_tokens": 2} for v in vectors]

    # when its output line is built
    body = assert_envelope(output_line(req, results, CREATED))

    # then each embedding is a base64 string that decodes to the same float32 vector
    for item, vector in zip(body["data"], vectors, strict=True):
        assert isinstance(item["embedding"], str)
        decoded = np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")
        np.testing.assert_array_equal(decoded, np.asarray(vector, dtype=np.float32))
    assert encode_base64([1.0]) == base64.b64encode(np.array([1.0], dtype="<f4").tobytes()).decode()


def test_every_line_gets_fresh_ids() -> None:
    # given one request
    req = request("/v1/embeddings", model="m", input="a")

    # when two lines are built for it
    one, two = (output_line(req, [{"embedding": [1.0], "input_tokens": 1}], CREATED) for _ in range(2))

    # then their line ids and request ids differ
    assert one["id"] != two["id"]
    assert one["response"]["request_id"] != two["response"]["request_id"]


@pytest.mark.parametrize("count", [1, 3])
def test_a_result_count_other_than_the_row_count_fails_loudly(count: int) -> None:
    # given a request with two rows
    req = request("/v1/chat/completions", model="m", n=2, messages=[{"role": "user", "content": "hi"}])

    # when / then a short or long result list is refused
    with pytest.raises(ValueError, match=f"has 2 rows but {count} results"):
        output_line(req, [generated("x")] * count, CREATED)


def test_failed_line_reports_a_request_that_ran_and_failed_as_openai_does() -> None:
    # given a request whose job failed
    req = request("/v1/completions", model="m", prompt="p")

    # when its line is built, with defaults and with a client error
    default = failed_line(req, "the worker ran out of memory")
    custom = failed_line(req, "model not found", status_code=404, error_type="invalid_request_error",
                         code="model_not_found")

    # then the error is the response body, under its status, and the line's own error is null
    for line in (default, custom):
        assert set(line) == {"id", "custom_id", "response", "error"}
        assert re.fullmatch(r"batch_req_[0-9a-f]{24}", line["id"]) and line["error"] is None
        assert line["custom_id"] == "req-1" and re.fullmatch(r"[0-9a-f]{32}", line["response"]["request_id"])
    assert default["response"]["status_code"] == 500
    assert default["response"]["body"] == {"error": {"message": "the worker ran out of memory", "type": "server_error",
                                                     "param": None, "code": None}}
    assert custom["response"]["status_code"] == 404
    assert custom["response"]["body"] == {"error": {"message": "model not found", "type": "invalid_request_error",
                                                    "param": None, "code": "model_not_found"}}


def test_invalid_line_carries_the_line_error_and_no_response() -> None:
    # given a file with a rejected line and a line whose custom id is missing
    good = json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {"model": "m", "input": "x"}})
    bad = json.dumps({"custom_id": "b", "method": "POST", "url": "/v1/chat/completions",
                      "body": {"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [{}]}})
    _, errs = parse_lines([good, "", bad, "{}"])

    # when their error lines are built
    lines = [invalid_line(e) for e in errs]

    # then each holds the code, message, param and line, with no response
    assert [re.fullmatch(r"batch_req_[0-9a-f]{24}", line.pop("id")) is not None for line in lines] == [True, True]
    assert lines == [
        {"custom_id": "b", "response": None,
         "error": {"code": "unsupported_value", "message": errs[0].message, "param": "body.tools", "line": 3}},
        {"custom_id": None, "response": None,
         "error": {"code": "missing_custom_id", "message": errs[1].message, "param": "custom_id", "line": 4}},
    ]
    assert errs[0].message.startswith("line 3: body.tools is not supported by hfqueue (local models)")
    json.dumps(lines)
