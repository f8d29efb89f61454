"""Parse OpenAI Batch API input lines into hfqueue work: valid requests, rejected lines, and job groups.

A line is ``{"custom_id", "method": "POST", "url", "body"}``. Every body field is checked: one hfqueue cannot
honour on a local model is rejected with a message saying how to fix it, never silently dropped. Pure: no I/O.

>>> reqs, errs = parse_lines(['{"custom_id": "a", "method": "POST", "url": "/v1/embeddings",'
...                           ' "body": {"model": "m", "input": ["x", "y"]}}'])
>>> reqs[0].rows, reqs[0].options["pooling"], errs
(['x', 'y'], None, [])
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import BaseModel

from hfqueue import tasks

ENDPOINTS: dict[str, str] = {"/v1/chat/completions": "text-generation", "/v1/completions": "text-generation",
                             "/v1/embeddings": "feature-extraction"}
MAX_N = 16
MAX_STOP = 4
MAX_INPUTS = 2048  # OpenAI's limit on the inputs of one embeddings request
MAX_NEW_TOKENS = 32768  # TextGenerationOptions' limit, checked here so the error names the body field
COMPLETIONS_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
_CHAT, _COMPLETIONS, _EMBEDDINGS = ENDPOINTS
_LOCAL = "is not supported by hfqueue (local models)"


class Request(BaseModel):
    """One valid input line and the hfqueue task rows and validated options it runs as.

    ``rows`` are in choice order: for completions, copy ``j`` of prompt ``i`` is row ``i * n + j``.
    """

    line: int
    custom_id: str
    url: str
    model: str
    task: str
    rows: list[Any]
    options: dict[str, Any]
    prompts: int = 1
    n: int = 1
    encoding_format: str = "float"
    echo: bool = False


class LineError(BaseModel):
    """One rejected input line; ``message`` names the line and the field and says how to fix it."""

    line: int
    custom_id: str | None
    code: str
    message: str
    param: str | None


class Group(BaseModel):
    """Requests that run as one hfqueue job: same endpoint, model and options."""

    url: str
    task: str
    model: str
    options: dict[str, Any]
    requests: list[Request]

    @property
    def rows(self) -> list[Any]:
        """The rows of all requests, concatenated in request order."""
        return [row for req in self.requests for row in req.rows]


class _Bad(Exception):
    """Why a line is rejected, as (code, param, problem); parse_lines turns it into a LineError."""


def _short(value: Any) -> str:
    """A value as the line wrote it (JSON), cut short."""
    text = json.dumps(value, ensure_ascii=False, default=repr)
    return text if len(text) <= 60 else text[:57] + "..."


# Accepted and ignored, as they change nothing locally: field -> (value check, code when it fails, what to send).
_IGNORED: dict[str, tuple[Callable[[Any], bool], str, str]] = {
    "user": (lambda v: isinstance(v, str), "invalid_value", "a string"),
    "metadata": (lambda v: isinstance(v, dict), "invalid_value", "an object"),
    **dict.fromkeys(("store", "parallel_tool_calls"),
                    (lambda v: isinstance(v, bool), "invalid_value", "true or false")),
    "stream": (lambda v: v is False, "unsupported_value", "false (batch results are not streamed)"),
    "logprobs": (lambda v: v is False, "unsupported_value", "false or null (no log probabilities are returned)"),
    **dict.fromkeys(("frequency_penalty", "presence_penalty"), (
        lambda v: type(v) in (int, float) and v == 0, "unsupported_value", "0 (there is no such penalty)")),
    "response_format": (lambda v: v == {"type": "text"}, "unsupported_value",
                        '{"type": "text"} (the output cannot be constrained)'),
}
# OpenAI fields hfqueue cannot honour, with why when it helps; null is accepted, as it means "not set".
_UNSUPPORTED: dict[str, str] = {
    **dict.fromkeys(("tools", "tool_choice", "functions", "function_call"), " (no tool calling)"),
    **dict.fromkeys(("audio", "modalities"), " (text output only)"),
    **dict.fromkeys(("prediction", "reasoning_effort", "service_tier", "stream_options", "web_search_options",
                     "verbosity", "prompt_cache_key", "safety_identifier", "suffix"), ""),
    "logit_bias": " (its token ids are OpenAI's)", "top_logprobs": " (no log probabilities are returned)",
}
_FIELDS: dict[str, tuple[set[str], dict[str, Any], dict[str, str]]] = {  # handled, ignored, unsupported
    _CHAT: ({"model", "messages", "max_completion_tokens", "max_tokens", "n", "temperature", "top_p", "seed", "stop"},
            _IGNORED, _UNSUPPORTED),
    _COMPLETIONS: ({"model", "prompt", "max_tokens", "n", "temperature", "top_p", "seed", "stop", "echo", "best_of"},
                   _IGNORED, _UNSUPPORTED),
    _EMBEDDINGS: ({"model", "input", "encoding_format", "dimensions"}, {"user": _IGNORED["user"]}, {}),
}


def _check_fields(url: str, body: dict[str, Any]) -> None:
    """Reject unknown fields and values hfqueue cannot honour; the handled fields are checked by their parser."""
    handled, ignored, unsupported = _FIELDS[url]
    for key, value in body.items():
        if key in handled or (value is None and (key in ignored or key in unsupported)):
            continue
        if key in ignored:
            accepts, code, allowed = ignored[key]
            if not accepts(value):
                verb = _LOCAL if code == "unsupported_value" else "is invalid"
                raise _Bad(code, f"body.{key}", f"{_short(value)} {verb}: send {allowed}")
        elif key in unsupported:
            raise _Bad("unsupported_value", f"body.{key}", f"{_LOCAL}{unsupported[key]}: remove it")
        else:
            raise _Bad("unknown_field", f"body.{key}", f"is not a field of {url} requests: remove it (or check its "
                       "spelling)")


def _number(body: dict[str, Any], key: str, low: float, high: float, *, integer: bool = False,
            low_open: bool = False) -> Any:
    """body[key] when in range, None when absent or null; else invalid_value naming the range."""
    value = body.get(key)
    if value is None:
        return None
    typed = isinstance(value, int) if integer else isinstance(value, int | float)
    # written so that NaN fails the range check
    if isinstance(value, bool) or not typed or not ((low < value) if low_open else (low <= value)) \
            or not value <= high:
        kind, lower = "an integer" if integer else "a number", f"above {low} up" if low_open else f"from {low}"
        raise _Bad("invalid_value", f"body.{key}", f"must be {kind} {lower} to {high}, got {_short(value)}")
    return value


def _generation(body: dict[str, Any], max_key: str, default_max: int | None) -> dict[str, Any]:
    """Options shared by chat and completions: length, sampling, seed and stop sequences."""
    options: dict[str, Any] = {}
    limit = _number(body, max_key, 1, MAX_NEW_TOKENS, integer=True)
    if limit is not None or default_max is not None:
        options["max_new_tokens"] = limit if limit is not None else default_max
    temperature = _number(body, "temperature", 0, 2)
    top_p = _number(body, "top_p", 0, 1, low_open=True)
    seed = _number(body, "seed", 0, 2**63 - 1, integer=True)
    # temperature 0 or absent is greedy (repeatable); a top_p below 1 asks for sampling whatever the temperature.
    nucleus = top_p is not None and top_p < 1
    options["do_sample"] = bool(temperature) or nucleus
    if temperature:
        options["temperature"] = float(temperature)
    if nucleus:
        options["top_p"] = float(top_p)
    if seed is not None:
        options["seed"] = seed
    stop = [body["stop"]] if isinstance(body.get("stop"), str) else body.get("stop")
    if stop is not None and not (isinstance(stop, list) and len(stop) <= MAX_STOP
                                 and all(isinstance(s, str) and s for s in stop)):
        raise _Bad("invalid_value", "body.stop", f"must be a non-empty string or a list of up to {MAX_STOP} "
                   f"non-empty strings, got {_short(body['stop'])}")
    if stop:
        options["stop"] = stop
    return options


def _text(content: Any, param: str) -> str:
    """A message's content as one string; text parts are joined with newlines."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list) or not content:
        raise _Bad("invalid_value", param, f"must be a string or a non-empty list of text parts, got {_short(content)}")
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            for key in sorted(part.keys() - {"type", "text"}):
                raise _Bad("unknown_field", f"{param}[{j}].{key}", "is not a text part field: send type and text")
            texts.append(part["text"])
        elif isinstance(kind, str) and kind != "text":
            raise _Bad("unsupported_value", f"{param}[{j}]", f"of type {_short(kind)} {_LOCAL}: send text parts")
        else:
            raise _Bad("invalid_value", f"{param}[{j}]", f'must be {{"type": "text", "text": ...}}, got {_short(part)}')
    return "\n".join(texts)


_MESSAGE_UNSUPPORTED = ("tool_calls", "tool_call_id", "function_call", "audio", "refusal")
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def _messages(value: Any) -> list[dict[str, str]]:
    """The conversation as ``[{"role", "content": str}]``, roles system/user/assistant (developer -> system)."""
    if not isinstance(value, list) or not value:
        raise _Bad("invalid_value", "body.messages", f"must be a non-empty list of messages, got {_short(value)}")
    out = []
    for i, message in enumerate(value):
        param = f"body.messages[{i}]"
        if not isinstance(message, dict):
            raise _Bad("invalid_value", param, f"must be an object with role and content, got {_short(message)}")
        for key, field in message.items():
            if key in _MESSAGE_UNSUPPORTED and field is not None:
                raise _Bad("unsupported_value", f"{param}.{key}", f"{_LOCAL} (no tool calls or audio): remove it")
            if key not in _MESSAGE_UNSUPPORTED and key not in ("role", "content", "name"):
                raise _Bad("unknown_field", f"{param}.{key}", "is not a message field: send role, content, name")
        role = message.get("role")
        if role in ("tool", "function"):
            raise _Bad("unsupported_value", f"{param}.role", f"{_short(role)} {_LOCAL} (no tool calls)")
        if not isinstance(role, str) or role not in _ROLES:
            raise _Bad("missing_field" if role is None else "invalid_value", f"{param}.role",
                       f"must be one of {', '.join(_ROLES)}, got {_short(role)}")
        if message.get("content") is None:
            raise _Bad("missing_field", f"{param}.content", "is required: send the message's text")
        out.append({"role": _ROLES[role], "content": _text(message["content"], f"{param}.content")})
    return out


def _texts(body: dict[str, Any], key: str) -> list[str]:
    """A required string or list of strings, each non-empty; token-id arrays are refused."""
    value, param = body.get(key), f"body.{key}"
    if value is None:
        raise _Bad("missing_field", param, "is required: a string or a list of strings")
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise _Bad("invalid_value", param, f"must be a non-empty string or list of strings, got {_short(value)}")
    for i, item in enumerate(items):
        where = param if isinstance(value, str) else f"{param}[{i}]"
        if isinstance(item, list) or (isinstance(item, int) and not isinstance(item, bool)):
            raise _Bad("unsupported_value", where, f"holds token ids, which hfqueue cannot use (they are ids of "
                       f"OpenAI's tokenizer, not your model's): send the {key} as text")
        if not (isinstance(item, str) and item):
            raise _Bad("invalid_value", where, f"must be a non-empty string, got {_short(item)}")
    return items


def _chat(body: dict[str, Any]) -> dict[str, Any]:
    if body.get("max_completion_tokens") is not None and body.get("max_tokens") is not None:
        raise _Bad("invalid_value", "body.max_tokens", "and body.max_completion_tokens are both given: keep one")
    if body.get("messages") is None:
        raise _Bad("missing_field", "body.messages", "is required: a non-empty list of {role, content} messages")
    row = _messages(body["messages"])
    max_key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    n = _number(body, "n", 1, MAX_N, integer=True) or 1
    return {"rows": [row] * n, "options": _generation(body, max_key, None), "n": n}


def _completions(body: dict[str, Any]) -> dict[str, Any]:
    prompts = _texts(body, "prompt")
    n = _number(body, "n", 1, MAX_N, integer=True) or 1
    best_of = _number(body, "best_of", 1, 20, integer=True)
    if best_of is not None and best_of != n:
        raise _Bad("unsupported_value", "body.best_of", f"other than n ({n}) {_LOCAL} (candidates are not ranked): "
                   "remove it")
    echo = body.get("echo")
    if echo is not None and not isinstance(echo, bool):
        raise _Bad("invalid_value", "body.echo", f"must be true or false, got {_short(echo)}")
    options = {**_generation(body, "max_tokens", COMPLETIONS_MAX_TOKENS), "return_full_text": bool(echo),
               "as_chat": False}
    return {"rows": [p for p in prompts for _ in range(n)], "options": options, "n": n, "prompts": len(prompts),
            "echo": bool(echo)}


def _embeddings(body: dict[str, Any]) -> dict[str, Any]:
    inputs = _texts(body, "input")
    if len(inputs) > MAX_INPUTS:
        raise _Bad("invalid_value", "body.input", f"has {len(inputs)} items, more than {MAX_INPUTS}: split it")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise _Bad("invalid_value", "body.encoding_format", f'must be "float" or "base64", got {_short(encoding)}')
    # The model's own semantics, as a feature-extraction job runs it (a sentence-transformers model's pooling,
    # normalization and prompts); `dimensions` keeps the first N values, renormalized when the model normalizes.
    dimensions = _number(body, "dimensions", 1, 1 << 20, integer=True)
    return {"rows": inputs, "options": {} if dimensions is None else {"dimensions": dimensions},
            "prompts": len(inputs), "encoding_format": encoding}


_BODIES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    _CHAT: _chat, _COMPLETIONS: _completions, _EMBEDDINGS: _embeddings}


def _request(number: int, custom_id: str, obj: dict[str, Any], endpoint: str | None,
             validated: dict[tuple[Any, ...], dict[str, Any] | str]) -> Request:
    for key in sorted(obj.keys() - {"custom_id", "method", "url", "body"}):
        raise _Bad("unknown_field", key, "is not a field of a batch line (custom_id, method, url, body): remove it")
    for key in ("method", "url", "body"):
        if key not in obj:
            raise _Bad("missing_field", key, "is required")
    if obj["method"] != "POST":
        raise _Bad("invalid_method", "method", f'must be "POST", got {_short(obj["method"])}')
    url = obj["url"]
    if endpoint is not None and url != endpoint:
        raise _Bad("invalid_url", "url", f"{_short(url)} differs from the batch's endpoint {endpoint}: send it in "
                   "a batch of its own")
    if not isinstance(url, str) or url not in ENDPOINTS:
        raise _Bad("invalid_url", "url", f"{_short(url)} is not supported: use one of {', '.join(ENDPOINTS)}")
    body = obj["body"]
    if not isinstance(body, dict):
        raise _Bad("invalid_value", "body", f"must be a JSON object, got {_short(body)}")
    _check_fields(url, body)
    model = body.get("model")
    if not (isinstance(model, str) and model):
        raise _Bad("missing_field" if model is None else "invalid_value", "body.model",
                   f"must be a Hub model id or a local model folder, got {_short(model)}")
    fields, task = _BODIES[url](body), ENDPOINTS[url]
    # Validated once per distinct set of options: a batch file repeats a handful of them thousands of times.
    seen = (task, *sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in fields["options"].items()))
    if seen not in validated:
        try:
            validated[seen] = tasks.get(task).validate_options(fields["options"])
        except ValueError as exc:  # pydantic's ValidationError, reworded by validate_options
            validated[seen] = str(exc)
    options = validated[seen]
    if isinstance(options, str):
        raise _Bad("invalid_value", "body", options)
    fields["options"] = dict(options)
    return Request(line=number, custom_id=custom_id, url=url, model=model, task=task, **fields)


def parse_lines(lines: Iterable[str | bytes], endpoint: str | None = None) -> tuple[list[Request], list[LineError]]:
    """Parse batch input lines into valid requests and rejected lines, each list in file order.

    Blank lines are skipped but counted, so ``line`` is the physical 1-based line. Of lines sharing a custom_id
    only the first is kept. With ``endpoint`` (one of ENDPOINTS), lines for any other url are rejected. Lines
    given as bytes (a file opened in binary) must be UTF-8: one that is not is rejected, never run altered.
    """
    if endpoint is not None and endpoint not in ENDPOINTS:
        raise ValueError(f"unsupported endpoint {endpoint!r}: use one of {', '.join(ENDPOINTS)}")
    requests: list[Request] = []
    errors: list[LineError] = []
    first_line: dict[str, int] = {}
    validated: dict[tuple[Any, ...], dict[str, Any] | str] = {}  # lines share a few option sets: validate each once
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        custom_id = None
        try:
            try:
                text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
            except UnicodeDecodeError as exc:
                raise _Bad("invalid_encoding", None, f"is not UTF-8 (byte {exc.start + 1}): save the file as "
                           "UTF-8") from None
            try:
                obj = json.loads(text.lstrip("\ufeff") if number == 1 else text)
            except json.JSONDecodeError as exc:
                raise _Bad("invalid_json", None, f"is not valid JSON ({exc.msg} at column {exc.colno}): write one "
                           "JSON object per line") from None
            except RecursionError:  # nested thousands deep
                raise _Bad("invalid_json", None, "is nested too deeply: write one JSON object per line") from None
            if not isinstance(obj, dict):
                raise _Bad("invalid_json", None, 'must be a JSON object {"custom_id", "method", "url", "body"}')
            if obj.get("custom_id") in (None, ""):
                raise _Bad("missing_custom_id", "custom_id", "is required: a non-empty string naming the request")
            if not isinstance(obj["custom_id"], str):
                raise _Bad("invalid_value", "custom_id", f"must be a string, got {_short(obj['custom_id'])}")
            custom_id = obj["custom_id"]
            if custom_id in first_line:
                raise _Bad("duplicate_custom_id", "custom_id", f"{_short(custom_id)} is already used on line "
                           f"{first_line[custom_id]}: give every request its own custom_id")
            first_line[custom_id] = number
            requests.append(_request(number, custom_id, obj, endpoint, validated))
        except _Bad as bad:
            code, param, problem = bad.args
            where = f"line {number}: {param} " if param else f"line {number} "
            errors.append(LineError(line=number, custom_id=custom_id, code=code, message=where + problem, param=param))
    return requests, errors


def group_requests(requests: list[Request]) -> list[Group]:
    """Requests that can share one hfqueue job, keyed by (url, model, options as canonical JSON); groups come in
    order of first appearance, their requests in file order."""
    groups: dict[tuple[str, str, str], Group] = {}
    for req in requests:
        key = (req.url, req.model, json.dumps(req.options, sort_keys=True, separators=(",", ":")))
        if key not in groups:
            groups[key] = Group(url=req.url, task=req.task, model=req.model, options=req.options, requests=[])
        groups[key].requests.append(req)
    return list(groups.values())
