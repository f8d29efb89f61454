"""Build OpenAI Batch API output and error file lines (dicts; the caller writes them as JSON lines).

Bodies follow OpenAI's shapes exactly, so clients that read OpenAI batch results read these unchanged.
Pure: no I/O.

>>> from hfqueue.openai_batch.requests import parse_lines
>>> [req], _ = parse_lines(['{"custom_id": "a", "method": "POST", "url": "/v1/embeddings",'
...                         ' "body": {"model": "m", "input": "hi"}}'])
>>> line = output_line(req, [{"embedding": [0.5, 0.5], "input_tokens": 3}], created=0)
>>> line["response"]["body"]["data"][0]["embedding"], line["response"]["body"]["usage"]
([0.5, 0.5], {'prompt_tokens': 3, 'total_tokens': 3})
"""

from __future__ import annotations

import base64
import struct
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from hfqueue.openai_batch.requests import LineError, Request


def _hex(length: int) -> str:
    return uuid.uuid4().hex[:length]


def _line_id() -> str:
    return f"batch_req_{_hex(24)}"


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _chat(req: Request, results: list[dict[str, Any]], created: int) -> dict[str, Any]:
    choices = [{"index": i, "message": {"role": "assistant", "content": r["generated_text"], "refusal": None},
                "logprobs": None, "finish_reason": r["finish_reason"]} for i, r in enumerate(results)]
    # Every choice answers the same conversation: its prompt counts once, as OpenAI bills it.
    usage = _usage(int(results[0]["prompt_tokens"]), sum(int(r["completion_tokens"]) for r in results))
    return {"id": f"chatcmpl-{_hex(24)}", "object": "chat.completion", "created": created, "model": req.model,
            "choices": choices, "usage": usage, "system_fingerprint": None}


def _completions(req: Request, results: list[dict[str, Any]], created: int) -> dict[str, Any]:
    choices = [{"text": r["generated_text"], "index": i, "logprobs": None, "finish_reason": r["finish_reason"]}
               for i, r in enumerate(results)]
    # Rows are prompt-major (row i * n + j is copy j of prompt i): count each prompt once, from its first copy.
    prompt_tokens = sum(int(r["prompt_tokens"]) for r in results[::req.n])
    usage = _usage(prompt_tokens, sum(int(r["completion_tokens"]) for r in results))
    return {"id": f"cmpl-{_hex(24)}", "object": "text_completion", "created": created, "model": req.model,
            "choices": choices, "usage": usage}


def encode_base64(vector: Sequence[float]) -> str:
    """An embedding as OpenAI's ``encoding_format="base64"`` sends it: little-endian float32 bytes, base64.

    >>> encode_base64([1.0])
    'AACAPw=='
    """
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def _embeddings(req: Request, results: list[dict[str, Any]], created: int) -> dict[str, Any]:
    encode: Callable[[Sequence[float]], Any] = (
        encode_base64 if req.encoding_format == "base64" else lambda v: [float(x) for x in v])
    data = [{"object": "embedding", "index": i, "embedding": encode(r["embedding"])} for i, r in enumerate(results)]
    tokens = sum(int(r["input_tokens"]) for r in results)
    return {"object": "list", "data": data, "model": req.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


_BODIES: dict[str, Callable[[Request, list[dict[str, Any]], int], dict[str, Any]]] = {
    "/v1/chat/completions": _chat, "/v1/completions": _completions, "/v1/embeddings": _embeddings}


def output_line(req: Request, results: list[dict[str, Any]], created: int) -> dict[str, Any]:
    """The output file line of a request that ran: its results (one per row, in row order) in OpenAI's body.

    ``created`` is the Unix time to report (the caller's clock, so these builders stay pure). Raises
    ValueError when the number of results is not the number of rows: a short answer must not pass as whole.
    """
    if len(results) != len(req.rows):
        raise ValueError(f"request {req.custom_id!r} (line {req.line}) has {len(req.rows)} rows but "
                         f"{len(results)} results")
    body = _BODIES[req.url](req, results, created)
    return {"id": _line_id(), "custom_id": req.custom_id,
            "response": {"status_code": 200, "request_id": _hex(32), "body": body}, "error": None}


def failed_line(req: Request, message: str, *, status_code: int = 500, error_type: str = "server_error",
                code: str | None = None) -> dict[str, Any]:
    """The output line of a request that ran and failed, as OpenAI reports one: an error body under
    ``response`` with its HTTP status, and ``error`` left null."""
    error = {"message": message, "type": error_type, "param": None, "code": code}
    return {"id": _line_id(), "custom_id": req.custom_id,
            "response": {"status_code": status_code, "request_id": _hex(32), "body": {"error": error}},
            "error": None}


def invalid_line(err: LineError) -> dict[str, Any]:
    """The error file line of an input line that was rejected before running: no response, the error and
    the line it came from."""
    return {"id": _line_id(), "custom_id": err.custom_id, "response": None,
            "error": {"code": err.code, "message": err.message, "param": err.param, "line": err.line}}
