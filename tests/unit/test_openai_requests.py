"""OpenAI Batch input lines -> hfqueue requests: every rule, every kind of bad line, option mapping, groups."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hfqueue import tasks
from hfqueue.openai_batch import requests as openai_requests
from hfqueue.openai_batch.requests import ENDPOINTS, Request, group_requests, parse_lines

pytestmark = pytest.mark.timeout(30)

CHAT, COMPLETIONS, EMBEDDINGS = "/v1/chat/completions", "/v1/completions", "/v1/embeddings"
HI = [{"role": "user", "content": "hi"}]
BASE: dict[str, dict[str, Any]] = {CHAT: {"model": "org/chat", "messages": HI}, COMPLETIONS: {"model": "org/lm", "prompt": "Once"},
        EMBEDDINGS: {"model": "org/emb", "input": "hello"}}
DROP = object()  # a body value that removes the field (None sends null)


def line(url: str = CHAT, custom_id: Any = "r1", **body: Any) -> str:
    """One input line: the endpoint's minimal body, updated with ``body`` (DROP removes a field)."""
    merged = {k: v for k, v in (BASE[url] | body).items() if v is not DROP}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": merged})


def one(text: str) -> Request:
    """The request parsed from one valid line."""
    reqs, errs = parse_lines([text])
    assert errs == [], errs
    return reqs[0]


def test_endpoints_map_to_hfqueue_tasks() -> None:
    # given / when / then
    assert ENDPOINTS == {CHAT: "text-generation", COMPLETIONS: "text-generation", EMBEDDINGS: "feature-extraction"}


def test_chat_line_becomes_a_normalized_conversation_with_validated_options() -> None:
    # given a chat line with a developer message, text parts and a name
    messages = [{"role": "developer", "content": "be brief"},
                {"role": "user", "name": "ann", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": "ok"}]

    # when it is parsed
    req = one(line(messages=messages))

    # then the row is the normalized message list and the options are text-generation's, greedy by default
    assert (req.line, req.custom_id, req.url, req.model, req.task) == (1, "r1", CHAT, "org/chat", "text-generation")
    assert req.rows == [[{"role": "system", "content": "be brief"}, {"role": "user", "content": "a\nb"},
                         {"role": "assistant", "content": "ok"}]]
    assert req.options == tasks.get("text-generation").validate_options({})
    assert req.options["do_sample"] is False and req.options["max_new_tokens"] == 256
    assert (req.prompts, req.n, req.echo) == (1, 1, False)


def test_blank_lines_are_skipped_but_counted_and_a_bom_is_ignored() -> None:
    # given blank and whitespace-only lines around two requests, the first line with a byte-order mark
    lines = ["\ufeff" + line(custom_id="a"), "", "   \n", line(custom_id="b"), "\t", "{oops"]

    # when they are parsed
    reqs, errs = parse_lines(lines)

    # then only real lines count as requests, with their physical line numbers
    assert [(r.custom_id, r.line) for r in reqs] == [("a", 1), ("b", 4)]
    assert [(e.line, e.code) for e in errs] == [(6, "invalid_json")]


def top(**fields: Any) -> str:
    """A line with these top-level fields only."""
    return json.dumps(fields)


OK = {"custom_id": "x", "method": "POST", "url": CHAT, "body": BASE[CHAT]}
BAD_LINES = [
    ("{not json", "invalid_json", None, None),
    ("[1, 2]", "invalid_json", None, None),
    ("[" * 100_000, "invalid_json", None, None),
    (top(method="POST", url=CHAT, body=BASE[CHAT]), "missing_custom_id", "custom_id", None),
    (top(**{**OK, "custom_id": ""}), "missing_custom_id", "custom_id", None),
    (top(**{**OK, "custom_id": 7}), "invalid_value", "custom_id", None),
    (top(**OK, extra=1), "unknown_field", "extra", "x"),
    (top(custom_id="x", url=CHAT, body=BASE[CHAT]), "missing_field", "method", "x"),
    (top(custom_id="x", method="POST", body=BASE[CHAT]), "missing_field", "url", "x"),
    (top(custom_id="x", method="POST", url=CHAT), "missing_field", "body", "x"),
    (top(**{**OK, "method": "GET"}), "invalid_method", "method", "x"),
    (top(**{**OK, "url": "/v1/responses"}), "invalid_url", "url", "x"),
    (top(**{**OK, "url": ["x"]}), "invalid_url", "url", "x"),
    (top(**{**OK, "body": "hi"}), "invalid_value", "body", "x"),
    (line(model=DROP), "missing_field", "body.model", "r1"),
    (line(model=""), "invalid_value", "body.model", "r1"),
    (line(model=3), "invalid_value", "body.model", "r1"),
    (line(temprature=0.5), "unknown_field", "body.temprature", "r1"),
    (line(echo=True), "unknown_field", "body.echo", "r1"),
    (line(EMBEDDINGS, stream=False), "unknown_field", "body.stream", "r1"),
    (line(tools=[{"type": "function"}]), "unsupported_value", "body.tools", "r1"),
    (line(tool_choice="auto"), "unsupported_value", "body.tool_choice", "r1"),
    (line(logit_bias={"50256": -100}), "unsupported_value", "body.logit_bias", "r1"),
    (line(top_logprobs=2), "unsupported_value", "body.top_logprobs", "r1"),
    (line(reasoning_effort="low"), "unsupported_value", "body.reasoning_effort", "r1"),
    (line(modalities=["text", "audio"]), "unsupported_value", "body.modalities", "r1"),
    (line(service_tier="flex"), "unsupported_value", "body.service_tier", "r1"),
    (line(logprobs=True), "unsupported_value", "body.logprobs", "r1"),
    (line(stream=True), "unsupported_value", "body.stream", "r1"),
    (line(frequency_penalty=0.5), "unsupported_value", "body.frequency_penalty", "r1"),
    (line(presence_penalty=-1), "unsupported_value", "body.presence_penalty", "r1"),
    (line(response_format={"type": "json_object"}), "unsupported_value", "body.response_format", "r1"),
    (line(user=5), "invalid_value", "body.user", "r1"),
    (line(COMPLETIONS, suffix="end"), "unsupported_value", "body.suffix", "r1"),
    (line(COMPLETIONS, best_of=3), "unsupported_value", "body.best_of", "r1"),
    (line(COMPLETIONS, logprobs=2), "unsupported_value", "body.logprobs", "r1"),
    (line(EMBEDDINGS, dimensions=0), "invalid_value", "body.dimensions", "r1"),
    (line(EMBEDDINGS, dimensions=2.5), "invalid_value", "body.dimensions", "r1"),
    (line(messages=DROP), "missing_field", "body.messages", "r1"),
    (line(messages=[]), "invalid_value", "body.messages", "r1"),
    (line(messages="hi"), "invalid_value", "body.messages", "r1"),
    (line(messages=["hi"]), "invalid_value", "body.messages[0]", "r1"),
    (line(messages=[{"content": "hi"}]), "missing_field", "body.messages[0].role", "r1"),
    (line(messages=[{"role": "bot", "content": "hi"}]), "invalid_value", "body.messages[0].role", "r1"),
    (line(messages=[{"role": "tool", "content": "1", "tool_call_id": None}]), "unsupported_value",
     "body.messages[0].role", "r1"),
    (line(messages=[*HI, {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]}]), "unsupported_value",
     "body.messages[1].tool_calls", "r1"),
    (line(messages=[*HI, {"role": "user"}]), "missing_field", "body.messages[1].content", "r1"),
    (line(messages=[{"role": "user", "content": "a", "mood": "x"}]), "unknown_field", "body.messages[0].mood", "r1"),
    (line(messages=[{"role": "user", "content": []}]), "invalid_value", "body.messages[0].content", "r1"),
    (line(messages=[{"role": "user", "content": [{"type": "text", "text": "a"},
                                                 {"type": "image_url", "image_url": {"url": "http://x"}}]}]),
     "unsupported_value", "body.messages[0].content[1]", "r1"),
    (line(messages=[{"role": "user", "content": [{"type": "text"}]}]), "invalid_value",
     "body.messages[0].content[0]", "r1"),
    (line(messages=[{"role": "user", "content": [{"type": "text", "text": "a", "cache": 1}]}]), "unknown_field",
     "body.messages[0].content[0].cache", "r1"),
    (line(max_tokens=10, max_completion_tokens=10), "invalid_value", "body.max_tokens", "r1"),
    (line(max_tokens=0), "invalid_value", "body.max_tokens", "r1"),
    (line(max_completion_tokens=40_000), "invalid_value", "body.max_completion_tokens", "r1"),
    (line(max_tokens="10"), "invalid_value", "body.max_tokens", "r1"),
    (line(max_tokens=10.5), "invalid_value", "body.max_tokens", "r1"),
    (line(temperature="hot"), "invalid_value", "body.temperature", "r1"),
    (line(temperature=2.5), "invalid_value", "body.temperature", "r1"),
    (line(temperature=True), "invalid_value", "body.temperature", "r1"),
    (line(top_p=0), "invalid_value", "body.top_p", "r1"),
    (line(top_p=1.5), "invalid_value", "body.top_p", "r1"),
    (line(seed=-1), "invalid_value", "body.seed", "r1"),
    (line(n=0), "invalid_value", "body.n", "r1"),
    (line(n=17), "invalid_value", "body.n", "r1"),
    (line(n=True), "invalid_value", "body.n", "r1"),
    (line(stop=""), "invalid_value", "body.stop", "r1"),
    (line(stop=["a", "b", "c", "d", "e"]), "invalid_value", "body.stop", "r1"),
    (line(stop=["a", 1]), "invalid_value", "body.stop", "r1"),
    (line(COMPLETIONS, prompt=DROP), "missing_field", "body.prompt", "r1"),
    (line(COMPLETIONS, prompt=""), "invalid_value", "body.prompt", "r1"),
    (line(COMPLETIONS, prompt=[]), "invalid_value", "body.prompt", "r1"),
    (line(COMPLETIONS, prompt=["a", ""]), "invalid_value", "body.prompt[1]", "r1"),
    (line(COMPLETIONS, prompt=[1, 2, 3]), "unsupported_value", "body.prompt[0]", "r1"),
    (line(COMPLETIONS, prompt=[[1, 2], [3]]), "unsupported_value", "body.prompt[0]", "r1"),
    (line(COMPLETIONS, echo="yes"), "invalid_value", "body.echo", "r1"),
    (line(EMBEDDINGS, input=DROP), "missing_field", "body.input", "r1"),
    (line(EMBEDDINGS, input=""), "invalid_value", "body.input", "r1"),
    (line(EMBEDDINGS, input=["a", ""]), "invalid_value", "body.input[1]", "r1"),
    (line(EMBEDDINGS, input=[[101, 102]]), "unsupported_value", "body.input[0]", "r1"),
    (line(EMBEDDINGS, input=["a"] * 2049), "invalid_value", "body.input", "r1"),
    (line(EMBEDDINGS, encoding_format="int8"), "invalid_value", "body.encoding_format", "r1"),
]


@pytest.mark.parametrize(("bad", "code", "param", "custom_id"), BAD_LINES)
def test_each_bad_line_is_rejected_with_its_code_param_and_line(bad: str, code: str, param: str | None,
                                                                custom_id: str | None) -> None:
    # given a valid line, then the bad one
    lines = [line(custom_id="good"), bad]

    # when they are parsed
    reqs, errs = parse_lines(lines)

    # then the good line is a request and the bad one a single error on line 2 naming its field
    assert [r.custom_id for r in reqs] == ["good"]
    assert [(e.line, e.code, e.param, e.custom_id) for e in errs] == [(2, code, param, custom_id)]
    assert errs[0].message.startswith(f"line 2: {param} " if param else "line 2 ")
    assert "Traceback" not in errs[0].message and len(errs[0].message) < 300


def test_messages_say_what_is_wrong_and_how_to_fix_it() -> None:
    # given lines with an unsupported field, an unknown field, a bad range and a bad url
    lines = [line(logprobs=True), line(custom_id="b", temprature=1), line(custom_id="c", temperature=9),
             json.dumps({**OK, "custom_id": "d", "url": "/v1/responses"})]

    # when they are parsed
    _, errs = parse_lines(lines)

    # then each message names the line and the field and says what to send instead
    assert [e.message for e in errs] == [
        ("line 1: body.logprobs true is not supported by hfqueue (local models): send false or null "
         "(no log probabilities are returned)"),
        "line 2: body.temprature is not a field of /v1/chat/completions requests: remove it (or check its spelling)",
        "line 3: body.temperature must be a number from 0 to 2, got 9",
        ('line 4: url "/v1/responses" is not supported: use one of /v1/chat/completions, /v1/completions, '
         "/v1/embeddings"),
    ]


def test_fields_that_change_nothing_locally_are_accepted_and_ignored() -> None:
    # given a chat line with every accepted-but-ignored field at an accepted value, and unsupported ones set to null
    ignored: dict[str, Any] = {
        "user": "u", "metadata": {"k": "v"}, "store": True, "stream": False, "logprobs": False,
        "frequency_penalty": 0, "presence_penalty": 0.0, "response_format": {"type": "text"},
        "parallel_tool_calls": True, "tools": None, "top_logprobs": None, "temperature": None, "n": None,
        "max_tokens": None, "seed": None, "stop": None}

    # when it is parsed, and a plain line too
    req, plain = one(line(**ignored)), one(line())

    # then nothing about the request changes
    assert (req.rows, req.options, req.n) == (plain.rows, plain.options, plain.n)
    assert one(line(logprobs=None)).options == plain.options
    assert one(line(EMBEDDINGS, user="u")).options == one(line(EMBEDDINGS)).options


def test_duplicate_custom_ids_keep_the_first_and_name_its_line() -> None:
    # given three lines sharing a custom id, with another line between
    lines = [line(custom_id="a"), line(custom_id="b"), line(custom_id="a", n=2), "", line(custom_id="a")]

    # when they are parsed
    reqs, errs = parse_lines(lines)

    # then the first "a" is kept and the later ones are errors pointing at line 1
    assert [(r.custom_id, r.line, r.n) for r in reqs] == [("a", 1, 1), ("b", 2, 1)]
    assert [(e.line, e.code, e.custom_id, e.param) for e in errs] == [
        (3, "duplicate_custom_id", "a", "custom_id"), (5, "duplicate_custom_id", "a", "custom_id")]
    assert all("already used on line 1" in e.message for e in errs)


def test_a_custom_id_is_taken_even_by_a_rejected_line() -> None:
    # given a rejected line, then a valid one reusing its custom id
    lines = [line(custom_id="a", tools=[{}]), line(custom_id="a")]

    # when they are parsed
    reqs, errs = parse_lines(lines)

    # then both are errors: custom ids must be unique across the file
    assert reqs == []
    assert [(e.line, e.code) for e in errs] == [(1, "unsupported_value"), (2, "duplicate_custom_id")]


def test_a_batch_endpoint_rejects_lines_for_other_urls() -> None:
    # given a batch for the chat endpoint with an embeddings line in it
    lines = [line(), line(EMBEDDINGS, custom_id="e")]

    # when it is parsed for that endpoint
    reqs, errs = parse_lines(lines, endpoint=CHAT)

    # then the embeddings line is an invalid_url error naming the batch's endpoint
    assert [r.custom_id for r in reqs] == ["r1"]
    assert [(e.line, e.code, e.param) for e in errs] == [(2, "invalid_url", "url")]
    assert "the batch's endpoint /v1/chat/completions" in errs[0].message


def test_an_unknown_batch_endpoint_is_refused_at_once() -> None:
    # given / when / then
    with pytest.raises(ValueError, match="unsupported endpoint '/v1/responses'"):
        parse_lines([], endpoint="/v1/responses")


def test_chat_n_repeats_the_conversation() -> None:
    # given / when
    req = one(line(n=3, temperature=0.8))

    # then there is one row per choice
    assert req.rows == [HI, HI, HI] and req.n == 3 and req.prompts == 1


def test_completions_list_prompt_rows_are_prompt_major() -> None:
    # given two prompts with two choices each
    req = one(line(COMPLETIONS, prompt=["A", "B"], n=2, best_of=2, echo=True))

    # then copy j of prompt i is row i * n + j, max_tokens takes OpenAI's default and echo returns the prompt
    assert req.rows == ["A", "A", "B", "B"]
    assert (req.prompts, req.n, req.echo, req.task) == (2, 2, True, "text-generation")
    assert req.options["max_new_tokens"] == 16
    assert req.options["return_full_text"] is True and req.options["as_chat"] is False
    assert one(line(COMPLETIONS)).options["return_full_text"] is False


@pytest.mark.parametrize(("body", "expected"), [
    ({}, {"do_sample": False, "temperature": None, "top_p": None}),
    ({"temperature": 0}, {"do_sample": False, "temperature": None, "top_p": None}),
    ({"temperature": 0.7}, {"do_sample": True, "temperature": 0.7, "top_p": None}),
    ({"temperature": 1}, {"do_sample": True, "temperature": 1.0}),
    ({"temperature": 0.7, "top_p": 1}, {"do_sample": True, "temperature": 0.7, "top_p": None}),
    ({"top_p": 1.0}, {"do_sample": False, "top_p": None}),
    ({"top_p": 0.9}, {"do_sample": True, "temperature": None, "top_p": 0.9}),
    ({"temperature": 0, "top_p": 0.5}, {"do_sample": True, "temperature": None, "top_p": 0.5}),
    ({"temperature": 0.5, "top_p": 0.5}, {"do_sample": True, "temperature": 0.5, "top_p": 0.5}),
    ({"seed": 42}, {"seed": 42, "do_sample": False}),
    ({"seed": 7, "temperature": 1.2}, {"seed": 7, "do_sample": True, "temperature": 1.2}),
    ({"max_tokens": 33}, {"max_new_tokens": 33}),
    ({"max_completion_tokens": 44}, {"max_new_tokens": 44}),
    ({"max_completion_tokens": 32768}, {"max_new_tokens": 32768}),
])
@pytest.mark.parametrize("url", [CHAT, COMPLETIONS])
def test_sampling_length_and_seed_map_to_generation_options(url: str, body: dict[str, Any],
                                                             expected: dict[str, Any]) -> None:
    # given a body for either generation endpoint (max_completion_tokens is chat's only)
    if "max_completion_tokens" in body and url == COMPLETIONS:
        body = {"max_tokens": body["max_completion_tokens"]}

    # when it is parsed
    options = one(line(url, **body)).options

    # then the options say what OpenAI's fields meant, and pass hfqueue's own validation unchanged
    assert {k: options[k] for k in expected} == expected
    assert options.get("stop") is None
    assert tasks.get("text-generation").validate_options(options) == options


@pytest.mark.parametrize(("stop", "expected"), [("\n", ["\n"]), (["a", "bc"], ["a", "bc"]),
                                                (["1", "2", "3", "4"], ["1", "2", "3", "4"])])
def test_stop_becomes_a_list_option(stop: Any, expected: list[str]) -> None:
    # given / when
    options = one(line(stop=stop)).options

    # then stop is a list, set on top of the validated options
    assert options["stop"] == expected
    assert {k: v for k, v in options.items() if k != "stop"} == {k: v for k, v in one(line()).options.items()
                                                                  if k != "stop"}


def test_an_empty_stop_list_sets_no_stop() -> None:
    # given / when / then
    assert one(line(stop=[])).options.get("stop") is None


def test_option_validation_errors_become_invalid_value(monkeypatch: pytest.MonkeyPatch) -> None:
    # given a request check looser than the task's own option limits
    monkeypatch.setattr(openai_requests, "MAX_NEW_TOKENS", 10**6)

    # when a line asks for more than text-generation allows
    reqs, errs = parse_lines([line(max_tokens=50_000)])

    # then the task's validation error is reported as the line's invalid_value, without a traceback
    assert reqs == []
    assert [(e.line, e.code, e.param) for e in errs] == [(1, "invalid_value", "body")]
    assert "max_new_tokens" in errs[0].message and "32768" in errs[0].message
    assert errs[0].message.startswith("line 1: body invalid options for task 'text-generation'")


def test_embeddings_inputs_are_rows_run_with_the_models_own_semantics() -> None:
    # given a string input, a list input in base64, and one asking for fewer dimensions
    single = one(line(EMBEDDINGS, input="hello"))
    many = one(line(EMBEDDINGS, input=["a", "b", "c"], encoding_format="base64"))
    short = one(line(EMBEDDINGS, input="hello", dimensions=64))

    # then each input is a row, run with no options (the model's own pooling, normalization and prompts, as a
    # feature-extraction job), and dimensions becomes the job option of that name
    assert (single.rows, single.prompts, single.encoding_format) == (["hello"], 1, "float")
    assert (many.rows, many.prompts, many.encoding_format) == (["a", "b", "c"], 3, "base64")
    defaults = tasks.get("feature-extraction").validate_options({})
    assert many.options == defaults and many.task == "feature-extraction"
    assert short.options == {**defaults, "dimensions": 64}
    assert one(line(EMBEDDINGS, encoding_format="float")).encoding_format == "float"


def test_requests_do_not_share_option_dicts() -> None:
    # given two lines with the same options
    reqs, _ = parse_lines([line(custom_id="a", temperature=0.5), line(custom_id="b", temperature=0.5)])

    # when one request's options are changed
    reqs[0].options["seed"] = 1

    # then the other's are not
    assert reqs[1].options["seed"] is None


def test_groups_are_keyed_by_url_model_and_options_in_order_of_first_appearance() -> None:
    # given lines over two models, two temperatures and two endpoints, with the same options written differently
    lines = [
        line(custom_id="a", temperature=0.5, stop=["x"]),
        line(custom_id="b", model="org/other"),
        line(custom_id="c", temperature=0.5, stop="x", n=2, messages=[{"role": "user", "content": "yo"}]),
        line(EMBEDDINGS, custom_id="d", input=["e1", "e2"]),
        line(custom_id="e", temperature=0.9),
        line(EMBEDDINGS, custom_id="f", input="e3", encoding_format="base64"),
        line(custom_id="g", model="org/other", max_tokens=None),
    ]
    reqs, errs = parse_lines(lines)
    assert errs == []

    # when they are grouped
    groups = group_requests(reqs)

    # then requests sharing (url, model, options) share a group, groups and requests keep file order
    assert [[r.custom_id for r in g.requests] for g in groups] == [["a", "c"], ["b", "g"], ["d", "f"], ["e"]]
    assert [(g.url, g.model, g.task) for g in groups] == [
        (CHAT, "org/chat", "text-generation"), (CHAT, "org/other", "text-generation"),
        (EMBEDDINGS, "org/emb", "feature-extraction"), (CHAT, "org/chat", "text-generation")]
    assert groups[0].options == reqs[0].options and groups[0].options["stop"] == ["x"]
    assert groups[0].rows == [HI, [{"role": "user", "content": "yo"}], [{"role": "user", "content": "yo"}]]
    assert groups[2].rows == ["e1", "e2", "e3"]


def test_no_requests_make_no_groups() -> None:
    # given / when / then
    assert group_requests([]) == []


def test_fifty_thousand_lines_parse_and_group_in_linear_time() -> None:
    # given the most lines an OpenAI batch may hold, with a few bad ones and two option sets
    lines = [line(custom_id=f"r{i}", temperature=0.5 if i % 2 else 0,
                  messages=[{"role": "user", "content": f"question {i}"}]) for i in range(50_000)]
    lines[10] = "{"
    lines[20] = lines[21]

    # when they are parsed and grouped (a quadratic step would blow the module's time limit)
    reqs, errs = parse_lines(lines)
    groups = group_requests(reqs)

    # then every good line is a request, in order, in one of two groups
    assert [(e.line, e.code) for e in errs] == [(11, "invalid_json"), (22, "duplicate_custom_id")]
    assert len(reqs) == 49_998 and reqs[-1].custom_id == "r49999" and reqs[-1].line == 50_000
    assert [len(g.requests) for g in groups] == [24_998, 25_000]


def test_a_line_that_is_not_utf8_is_rejected_not_run_altered() -> None:
    # given a file read as bytes whose second line holds a Latin-1 byte
    good = line(custom_id="a").encode()
    bad = line(custom_id="b").encode().replace(b'"b"', b'"b\xe9"')

    # when it is parsed
    reqs, errs = parse_lines([good, bad])

    # then the first runs, the second is rejected by its number, saying to save the file as UTF-8
    assert [r.custom_id for r in reqs] == ["a"]
    assert [(e.line, e.code) for e in errs] == [(2, "invalid_encoding")] and "UTF-8" in errs[0].message
