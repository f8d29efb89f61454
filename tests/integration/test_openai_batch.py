"""OpenAI Batch API files end to end: a JSONL file of chat, completions and embeddings requests runs as hfqueue
jobs on tiny local models, and its output and error files read as OpenAI's, with values equal to the models
called directly. Real redis-server, real worker, nothing mocked."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers
from sentence_transformers import SentenceTransformer

from hfqueue import Client, Settings
from hfqueue.openai_batch.handle import OpenAIBatch
from tests.conftest import settings_env
from tests.task_models import without_chat_template

pytestmark = pytest.mark.timeout(120)

CHAT, COMPLETIONS, EMBEDDINGS = "/v1/chat/completions", "/v1/completions", "/v1/embeddings"
DIMENSIONS = 8  # of the tiny model's 32
MAX_TOKENS = 8
HELLO = [{"role": "user", "content": "Say hello."}]
COLOUR = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]
QUESTION = [{"role": "user", "content": "What is two plus two?"}]
PROMPTS = ["The capital of France is", "Once upon a time"]
SENTENCES = ["The cat sat on the mat.", "Queues hold work until a worker is free."]


# --- builders -------------------------------------------------------------------------------------------------

def request(custom_id: str, url: str, **body: Any) -> dict[str, Any]:
    """One batch input line."""
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def write_jsonl(path: Path, lines: Sequence[dict[str, Any] | str]) -> Path:
    """A batch file: dicts as JSON, strings written as they are (bad or blank lines)."""
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def greedy_chat(model_dir: Path, messages: list[dict[str, str]], max_new_tokens: int) -> dict[str, Any]:
    """The chat-templated prompt through ``model.generate`` alone: reply, finish reason and token counts."""
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    templated = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    enc = tok(templated, add_special_tokens=False, return_tensors="pt")
    with torch.inference_mode():
        ids = model.generate(**enc, pad_token_id=tok.pad_token_id, max_new_tokens=max_new_tokens)[0]
    new = ids[enc["input_ids"].shape[1]:].tolist()
    return {"text": tok.decode(new, skip_special_tokens=True), "templated": templated,
            "prompt_tokens": enc["input_ids"].shape[1], "completion_tokens": len(new),
            "finish_reason": "stop" if new[-1] == tok.eos_token_id else "length"}


def greedy_completion(model_dir: Path, prompt: str, max_new_tokens: int) -> tuple[str, int]:
    """A plain prompt through ``model.generate`` alone: the continuation and the prompt's token count."""
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    enc = tok(prompt, return_tensors="pt")
    with torch.inference_mode():
        ids = model.generate(**enc, pad_token_id=tok.pad_token_id, max_new_tokens=max_new_tokens)[0]
    return str(tok.decode(ids[enc["input_ids"].shape[1]:], skip_special_tokens=True)), int(enc["input_ids"].shape[1])


def direct_embedding(model_dir: Path, text: str, dimensions: int | None = None) -> tuple[np.ndarray, int]:
    """``SentenceTransformer(model_dir).encode(text)`` (cut to ``dimensions`` and renormalized when given), and
    the text's token count."""
    model = SentenceTransformer(str(model_dir), device="cpu")
    vector = model.encode([text], truncate_dim=dimensions, normalize_embeddings=dimensions is not None)[0]
    return vector, int(model.preprocess([text])["attention_mask"].sum())


def hfq(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run `hfq ARGS...` in a child process."""
    return subprocess.run([sys.executable, "-m", "hfqueue", *args], env=env, capture_output=True, text=True,
                          timeout=90, check=False)


# --- one mixed batch, run once, read by the first tests --------------------------------------------------------

@dataclass
class MixedRun:
    batch: OpenAIBatch
    final: dict[str, Any]
    output: dict[str, dict[str, Any]]  # by custom_id
    errors: list[dict[str, Any]]
    stop: str


BAD_LINES = {3: "invalid_json", 6: "missing_custom_id", 8: "duplicate_custom_id", 9: "invalid_url",
             10: "unknown_field"}
GOOD_IDS = {"chat-a", "cmpl", "emb-float", "chat-b", "chat-stop", "chat-short", "emb-b64", "emb-dim"}


@pytest.fixture(scope="module")
def mixed(settings: Settings, worker: Any, causal_lm: Path, st_cls: Path,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[MixedRun]:
    """A 14-line batch file (one blank) with 8 good requests in 6 groups and 5 bad lines, run to its end.

    Embeddings go to a CLS-pooled, normalizing sentence-transformers model (BGE's shape), once with dimensions."""
    # A stop string the greedy reply is known to hold, past its start and nowhere in the prompt.
    reply = greedy_chat(causal_lm, QUESTION, 12)
    found = re.search(r"[A-Za-z]{3,}", reply["text"][1:])
    assert found, f"no word to stop at in {reply['text']!r}"
    stop = found.group()
    cut = reply["text"].find(stop)
    assert cut > 0 and (reply["templated"] + reply["text"]).find(stop) == len(reply["templated"]) + cut
    m = str(causal_lm)
    lines: list[dict[str, Any] | str] = [
        request("chat-a", CHAT, model=m, messages=HELLO, max_tokens=MAX_TOKENS, n=2),                      # 1
        request("cmpl", COMPLETIONS, model=m, prompt=PROMPTS, max_tokens=MAX_TOKENS, n=2),                 # 2
        '{"custom_id": "broken", "method": "POST",',                                                       # 3
        "",                                                                                                # 4
        request("emb-float", EMBEDDINGS, model=str(st_cls), input=SENTENCES),                              # 5
        {"method": "POST", "url": CHAT, "body": {"model": m, "messages": HELLO}},                          # 6
        request("chat-b", CHAT, model=m, messages=COLOUR, max_completion_tokens=MAX_TOKENS, temperature=0),  # 7
        request("chat-a", CHAT, model=m, messages=COLOUR, max_tokens=MAX_TOKENS),                          # 8
        request("img", "/v1/images/generations", model=m, prompt="a cat"),                                 # 9
        request("odd", CHAT, model=m, messages=HELLO, max_tokens=MAX_TOKENS, colour="blue"),               # 10
        request("chat-stop", CHAT, model=m, messages=QUESTION, max_tokens=12, stop=stop),                  # 11
        request("chat-short", CHAT, model=m, messages=HELLO, max_tokens=MAX_TOKENS - 3),                   # 12
        request("emb-b64", EMBEDDINGS, model=str(st_cls), input=SENTENCES[1], encoding_format="base64"),   # 13
        request("emb-dim", EMBEDDINGS, model=str(st_cls), input=SENTENCES[0], dimensions=DIMENSIONS),      # 14
    ]
    path = write_jsonl(tmp_path_factory.mktemp("mixed") / "requests.jsonl", lines)
    with Client(settings) as client:
        batch = client.submit_openai_batch(path)
        final = batch.wait(timeout=90, poll_interval=0.2)
        output = {line["custom_id"]: line for line in read_jsonl(batch.output_file)}
        yield MixedRun(batch, final, output, read_jsonl(batch.error_file), stop)


def test_a_mixed_batch_completes_with_openai_shaped_files(mixed: MixedRun) -> None:
    # given the mixed batch file: 7 good lines, 5 bad ones, a blank one
    # when it ran to its end (the fixture waited for it)
    final, output = mixed.final, mixed.output

    # then it is completed, every non-blank line is counted once, and the object is OpenAI's Batch
    assert final["status"] == "completed" and final["id"] == mixed.batch.id and final["object"] == "batch"
    assert final["request_counts"] == {"total": 13, "completed": 8, "failed": 5}
    assert all(url in final["endpoint"] for url in (CHAT, COMPLETIONS, EMBEDDINGS))
    times = [final["created_at"], final["in_progress_at"], final["finalizing_at"], final["completed_at"]]
    assert all(isinstance(t, int) for t in times) and times == sorted(times)
    assert final["output_file_id"] == str(mixed.batch.output_file) and mixed.batch.output_file.exists()
    assert final["error_file_id"] == str(mixed.batch.error_file) and mixed.batch.error_file.exists()
    assert [(e["line"], e["code"]) for e in final["errors"]["data"]] == list(BAD_LINES.items())
    # and output.jsonl holds one response per good request, in OpenAI's shapes
    assert len(read_jsonl(mixed.batch.output_file)) == len(output) and set(output) == GOOD_IDS
    for line in output.values():
        assert line["id"].startswith("batch_req_") and line["error"] is None
        assert line["response"]["status_code"] == 200 and line["response"]["request_id"]
        usage = line["response"]["body"]["usage"]
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage.get("completion_tokens", 0) > 0
    bodies = {cid: line["response"]["body"] for cid, line in output.items()}
    assert {cid: b["object"] for cid, b in bodies.items()} == {
        "chat-a": "chat.completion", "chat-b": "chat.completion", "chat-stop": "chat.completion",
        "chat-short": "chat.completion", "cmpl": "text_completion", "emb-float": "list", "emb-b64": "list",
        "emb-dim": "list"}
    assert [c["index"] for c in bodies["chat-a"]["choices"]] == [0, 1]
    assert {c["message"]["role"] for c in bodies["chat-a"]["choices"]} == {"assistant"}
    assert [c["index"] for c in bodies["cmpl"]["choices"]] == [0, 1, 2, 3]
    assert [(d["object"], d["index"]) for d in bodies["emb-float"]["data"]] == [("embedding", 0), ("embedding", 1)]
    # and errors.jsonl holds each bad line once, with its physical line number (the blank line counted)
    assert [(e["error"]["line"], e["error"]["code"]) for e in mixed.errors] == list(BAD_LINES.items())
    assert all(e["response"] is None and e["id"].startswith("batch_req_") for e in mixed.errors)
    assert mixed.errors[2]["custom_id"] == "chat-a" and "already used on line 1" in mixed.errors[2]["error"]["message"]


def test_requests_with_equal_options_share_a_job(mixed: MixedRun) -> None:
    # given chat lines 1 and 7 with equal options (max_tokens vs max_completion_tokens, temperature 0 or absent),
    # line 12 with another max_tokens and line 11 with a stop string
    # when the batch ran
    jobs = sorted((s.task, s.rows_total, s.state.value) for s in (j.status() for j in mixed.batch.jobs()))
    # then lines 1 (n=2) and 7 made one 3-row job, the two embeddings lines one, every other group its own
    assert jobs == [("feature-extraction", 1, "completed"), ("feature-extraction", 3, "completed"),
                    ("text-generation", 1, "completed"),
                    ("text-generation", 1, "completed"), ("text-generation", 3, "completed"),
                    ("text-generation", 4, "completed")]


def test_mixed_batch_values_equal_the_models_called_directly(mixed: MixedRun, causal_lm: Path,
                                                             st_cls: Path) -> None:
    # given the same requests run directly with transformers, one at a time
    body = {cid: line["response"]["body"] for cid, line in mixed.output.items()}
    hello, colour = greedy_chat(causal_lm, HELLO, MAX_TOKENS), greedy_chat(causal_lm, COLOUR, MAX_TOKENS)
    short, question = greedy_chat(causal_lm, HELLO, MAX_TOKENS - 3), greedy_chat(causal_lm, QUESTION, 12)

    # then greedy chat replies (each choice of n=2), reasons and usage equal generate on the templated prompt
    for cid, direct, n in (("chat-a", hello, 2), ("chat-b", colour, 1), ("chat-short", short, 1)):
        assert [c["message"]["content"] for c in body[cid]["choices"]] == [direct["text"]] * n, cid
        assert [c["finish_reason"] for c in body[cid]["choices"]] == [direct["finish_reason"]] * n, cid
        assert body[cid]["usage"] == {"prompt_tokens": direct["prompt_tokens"],
                                      "completion_tokens": n * direct["completion_tokens"],
                                      "total_tokens": direct["prompt_tokens"] + n * direct["completion_tokens"]}
    assert hello["text"].startswith(short["text"]) and hello["text"] != short["text"]
    # and the stop string cuts the reply before it, finishing with "stop"
    [stopped] = body["chat-stop"]["choices"]
    assert stopped["message"]["content"] == question["text"][:question["text"].find(mixed.stop)]
    assert stopped["finish_reason"] == "stop" and mixed.stop not in stopped["message"]["content"]
    # and each completions prompt is continued as generate does it (n=2: choices prompt by prompt), the usage
    # counting each prompt once
    continued = [greedy_completion(causal_lm, p, MAX_TOKENS) for p in PROMPTS]
    assert [c["text"] for c in body["cmpl"]["choices"]] == [text for text, _ in continued for _ in range(2)]
    assert body["cmpl"]["usage"]["prompt_tokens"] == sum(n for _, n in continued)
    # and embeddings equal sentence-transformers' (CLS pooling, normalized); base64 decodes to the float form's
    # vector; with dimensions, the first N values renormalized, as encode(truncate_dim=N) gives them
    vectors = [direct_embedding(st_cls, s) for s in SENTENCES]
    got = np.array([d["embedding"] for d in body["emb-float"]["data"]], dtype=np.float32)
    np.testing.assert_allclose(got, np.stack([v for v, _ in vectors]), atol=1e-5)
    assert body["emb-float"]["usage"] == {"prompt_tokens": vectors[0][1] + vectors[1][1],
                                          "total_tokens": vectors[0][1] + vectors[1][1]}
    decoded = np.frombuffer(base64.b64decode(body["emb-b64"]["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(decoded, got[1], atol=1e-6)
    assert abs(float(np.linalg.norm(decoded)) - 1) < 1e-5
    cut, _ = direct_embedding(st_cls, SENTENCES[0], DIMENSIONS)
    [short] = body["emb-dim"]["data"]
    assert len(short["embedding"]) == DIMENSIONS and len(got[0]) > DIMENSIONS
    np.testing.assert_allclose(short["embedding"], cut, atol=1e-5)


# --- models that cannot run, cancelling, nothing valid, the command line ------------------------------------

def test_requests_for_models_that_cannot_run_fail_alone(client: Client, causal_lm: Path, encoder: Path,
                                                        tmp_path: Path) -> None:
    # given a copy of the causal LM whose tokenizer has no chat template, and a model path that does not exist
    no_template = without_chat_template(causal_lm, tmp_path / "no-template")
    assert transformers.AutoTokenizer.from_pretrained(no_template).chat_template is None
    missing = str(tmp_path / "no-such-model")
    path = write_jsonl(tmp_path / "requests.jsonl", [
        request("ok-chat", CHAT, model=str(causal_lm), messages=HELLO, max_tokens=4),
        request("nt-1", CHAT, model=str(no_template), messages=HELLO, max_tokens=4),
        request("missing-1", EMBEDDINGS, model=missing, input="hello"),
        request("nt-2", CHAT, model=str(no_template), messages=COLOUR, max_tokens=4),
        request("ok-emb", EMBEDDINGS, model=str(encoder), input=SENTENCES[0]),
        request("missing-2", EMBEDDINGS, model=missing, input=["a", "b"]),
    ])

    # when the batch runs
    batch = client.submit_openai_batch(path)
    final = batch.wait(timeout=90, poll_interval=0.2)

    # then the missing model's lines are rejected with their line numbers, the template-less job failed on the
    # worker and each of its requests has a 500 naming the chat template, and the other requests completed
    assert final["status"] == "completed"
    assert final["request_counts"] == {"total": 6, "completed": 2, "failed": 4}
    assert {line["custom_id"] for line in read_jsonl(batch.output_file)} == {"ok-chat", "ok-emb"}
    errors = read_jsonl(batch.error_file)
    assert [e["custom_id"] for e in errors] == ["nt-1", "missing-1", "nt-2", "missing-2"]
    for e in (errors[1], errors[3]):
        assert e["response"] is None and e["error"]["code"] == "invalid_model" and missing in e["error"]["message"]
    assert [e["error"]["line"] for e in (errors[1], errors[3])] == [3, 6]
    for e in (errors[0], errors[2]):
        assert e["error"] is None and e["response"]["status_code"] == 500
        assert "chat template" in e["response"]["body"]["error"]["message"]
    states = {s.model: (s.state.value, s.error or "") for s in (j.status() for j in batch.jobs())}
    assert states[str(no_template)][0] == "failed" and "chat template" in states[str(no_template)][1]
    assert states[str(causal_lm)] == states[str(encoder)] == ("completed", "")


def test_cancelling_a_queued_batch(idle_client: Client, causal_lm: Path, encoder: Path, tmp_path: Path) -> None:
    # given a batch on a queue no worker serves: three valid requests in two jobs, and one bad line
    path = write_jsonl(tmp_path / "requests.jsonl", [
        request("c1", CHAT, model=str(causal_lm), messages=HELLO, max_tokens=4),
        request("e1", EMBEDDINGS, model=str(encoder), input="hello"),
        request("c1", CHAT, model=str(causal_lm), messages=COLOUR, max_tokens=4),
        request("c2", CHAT, model=str(causal_lm), messages=COLOUR, max_tokens=4),
    ])
    batch = idle_client.submit_openai_batch(path)
    assert batch.status()["status"] == "in_progress" and len(batch.jobs()) == 2

    # when it is cancelled
    obj = batch.cancel()

    # then it is cancelled, its jobs too, every valid request is in errors.jsonl as batch_cancelled, none ran
    assert obj["status"] == "cancelled" and isinstance(obj["cancelled_at"], int)
    assert obj["request_counts"] == {"total": 4, "completed": 0, "failed": 4}
    assert {j.status().state.value for j in batch.jobs()} == {"cancelled"}
    assert obj["output_file_id"] == str(batch.output_file) and batch.output_file.read_text() == ""
    errors = read_jsonl(batch.error_file)
    assert [(e["custom_id"], e["error"]["line"], e["error"]["code"]) for e in errors] == [
        ("c1", 1, "batch_cancelled"), ("e1", 2, "batch_cancelled"), ("c1", 3, "duplicate_custom_id"),
        ("c2", 4, "batch_cancelled")]
    assert all(e["response"] is None for e in errors)
    assert batch.status() == obj  # and it stays so


def test_a_batch_with_no_valid_line_fails_without_jobs(idle_client: Client, causal_lm: Path, tmp_path: Path) -> None:
    # given a file none of whose lines is valid
    path = write_jsonl(tmp_path / "requests.jsonl", [
        "[1, 2]",
        request("a", CHAT, model=str(causal_lm), messages=[], max_tokens=4),
        "",
        request("b", EMBEDDINGS, model=str(causal_lm), input="x", dimensions=0),
    ])
    before = {s.job_id for s in idle_client.jobs()}

    # when it is submitted
    batch = idle_client.submit_openai_batch(path)

    # then the batch failed at once, listing each line, and no job was created
    obj = batch.status()
    assert obj["status"] == "failed" and isinstance(obj["failed_at"], int)
    assert obj["request_counts"] == {"total": 3, "completed": 0, "failed": 3}
    expected = [(1, "invalid_json"), (2, "invalid_value"), (4, "invalid_value")]
    assert [(e["line"], e["code"]) for e in obj["errors"]["data"]] == expected
    assert [(e["error"]["line"], e["error"]["code"]) for e in read_jsonl(batch.error_file)] == expected
    assert obj["error_file_id"] == str(batch.error_file)
    assert batch.jobs() == [] and {s.job_id for s in idle_client.jobs()} == before
    assert not list(batch.folder.glob("job-*"))


def test_cli_submit_wait_status_and_run(worker: Any, settings: Settings, causal_lm: Path, encoder: Path,
                                        tmp_path: Path) -> None:
    # given a batch file with one bad line, and one with none
    good = [request("c", CHAT, model=str(causal_lm), messages=HELLO, max_tokens=4),
            request("e", EMBEDDINGS, model=str(encoder), input=SENTENCES)]
    partial = write_jsonl(tmp_path / "partial.jsonl", [*good, request("x", CHAT, model=str(causal_lm))])
    whole = write_jsonl(tmp_path / "whole.jsonl", good)
    env = settings_env(settings)

    # when one is submitted with `hfq submit` and awaited with `hfq wait`, the other run with `hfq run`
    submitted = hfq("submit", "--openai-batch", str(partial), "--json", env=env)
    assert submitted.returncode == 0, submitted.stderr
    batch_id = json.loads(submitted.stdout)["batch_id"]
    waited = hfq("wait", batch_id, "--timeout", "60", "--json", env=env)
    shown = hfq("status", batch_id, env=env)
    ran = hfq("run", "--openai-batch", str(whole), "--json", env=env)

    # then wait exits 3 (a request failed) printing the batch object, status names the state and counts,
    # and run exits 0 (none failed)
    assert waited.returncode == 3, waited.stderr
    obj = json.loads(waited.stdout)
    assert obj["id"] == batch_id and obj["object"] == "batch" and obj["status"] == "completed"
    assert obj["request_counts"] == {"total": 3, "completed": 2, "failed": 1}
    assert shown.returncode == 0 and f"batch {batch_id}: completed" in shown.stdout
    assert "requests: 3 total, 2 completed, 1 failed" in shown.stdout
    assert ran.returncode == 0, ran.stderr
    done = json.loads(ran.stdout)
    assert done["status"] == "completed" and done["request_counts"] == {"total": 2, "completed": 2, "failed": 0}
    assert {line["custom_id"] for line in read_jsonl(Path(done["output_file_id"]))} == {"c", "e"}
