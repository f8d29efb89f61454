"""The paths ``make gpu-check`` proves, each a real job on the GPU workers compared with the CPU float32 reference.

A check returns ``{"path", "status" (PASS/FAIL/SKIP), "detail", "numbers"}``; an exception is a FAIL with its
message. The tolerances are first estimates, to be read against the numbers the first GPU run prints.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from gpu_answers import greedy_gaps, min_cosine, vectors

from hfqueue import Client, Settings
from hfqueue.state.embedded import RedisServer, free_port
from tests.tiny_models import sentences

Verdict = dict[str, Any]
# per precision: min cosine to CPU float32 (embeddings), max score difference (classification), and how far below
# float32's greedy token, in float32 logits, a generated token may score (generation: see gpu_answers.greedy_gaps)
COSINE = {"float32": 0.99999, "float16": 0.999, "bfloat16": 0.99}
SCORE_DIFF = {"float32": 1e-4, "float16": 0.01, "bfloat16": 0.04}
NEAR_TIE = {"float16": 0.01, "bfloat16": 0.05}


class Rig:
    """A redis-server, the CPU reference worker and the GPU workers (a CPU stand-in with ``--cpu``), and models."""

    def __init__(self, work: Path, gpus: list[str]) -> None:
        self.work, self.gpus, self.gpu = work, gpus, bool(gpus)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.metrics_port = free_port()

    def __enter__(self) -> "Rig":
        from gpu_models import build_all

        self.server = RedisServer(self.work / "redis").__enter__()
        self.models = build_all(self.work / "models", gpu=self.gpu)
        base = {"HFQ_BROKER_URL": self.server.url, "HFQ_OUTPUT_ROOT": str(self.work / "results"),
                "HFQ_INPUT_ROOTS": json.dumps([str(self.work)]), "HFQ_STATE_DIR": str(self.work / "state"),
                "HFQ_REUSE": "false", "HF_HUB_OFFLINE": "1", "HFQ_METRICS_ADDRESS": "127.0.0.1"}
        self.ref = self._start("ref", {**base, "HFQ_DEVICE": "cpu", "HFQ_DTYPE": "float32", "HFQ_METRICS_PORT": "0"})
        serve = {**base, "HFQ_METRICS_PORT": str(self.metrics_port), "HFQ_MAX_LENGTH": "4096"}
        if self.gpu:  # room for the out-of-memory check's 8M-token batches; every GPU, one worker each
            serve.update(HFQ_MAX_BATCH_SIZE="2048", HFQ_MAX_BATCH_TOKENS=str(2048 * 4096))
            self.main = self._start("gpu", serve, "--gpus", "all")
        else:
            self.main = self._start("gpu", {**serve, "HFQ_DEVICE": "cpu", "HFQ_PREFETCH_BATCHES": "true"})
        return self

    def _start(self, queue: str, env: dict[str, str], *extra: str) -> Client:
        log = (self.work / f"{queue}.log").open("ab")
        child = {k: v for k, v in os.environ.items() if not k.startswith("HFQ_")}
        self.procs.append(subprocess.Popen([sys.executable, "-m", "hfqueue", "worker", "--name", queue, *extra],
                                           env={**child, **env, "HFQ_QUEUE": queue}, stdout=log, stderr=log))
        client = Client(Settings(broker_url=self.server.url, queue=queue, output_root=self.work / "results",
                                 input_roots=[self.work], reuse=False))
        want = max(1, len(self.gpus)) if queue == "gpu" and self.gpu else 1
        deadline = time.monotonic() + 300
        while len([w for w in client.live_workers() if w.queue == queue]) < want:
            if time.monotonic() > deadline or self.procs[-1].poll() is not None:
                raise RuntimeError(f"the {queue} worker did not start: see {self.work / f'{queue}.log'}")
            time.sleep(0.5)
        return client

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.server.__exit__(None, None, None)

    def outputs(self, client: Client, model: str, task: str = "feature-extraction", **fields: Any) -> Any:
        """Run a job and return its results (a datasets.Dataset) and its final status."""
        job = client.submit(task=task, model=str(self.models[model]), **fields)
        return job.result(timeout=900), job.status()

    def metric(self, name: str) -> float:
        """A metric's samples summed over every GPU worker (ports HFQ_METRICS_PORT + position)."""
        import requests
        from prometheus_client.parser import text_string_to_metric_families

        found = 0.0
        for i in range(max(1, len(self.gpus))):
            text = requests.get(f"http://127.0.0.1:{self.metrics_port + i}/metrics", timeout=10).text
            found += sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)
        return found


def verdict(path: str, ok: bool | None, detail: str, **numbers: Any) -> Verdict:
    status = "SKIP" if ok is None else "PASS" if ok else "FAIL"
    return {"path": path, "status": status, "detail": detail, "numbers": numbers}


def embeddings(rig: Rig, dtype: str, path: str | None = None) -> Verdict:
    path = path or f"embeddings {dtype}"
    rows = sentences(256 if rig.gpu else 32)
    want = vectors(rig.outputs(rig.ref, "encoder", inputs=rows)[0])
    ds, status = rig.outputs(rig.main, "encoder", inputs=rows, dtype=dtype)
    cosine = min_cosine(vectors(ds), want)
    return verdict(path, cosine >= COSINE[dtype] and status.dtype == dtype,
                   f"min cosine {cosine:.6f} to CPU float32 (>= {COSINE[dtype]}), ran in {status.dtype}",
                   min_cosine=cosine)


def classification(rig: Rig, dtype: str, path: str | None = None, **fields: Any) -> Verdict:
    path = path or f"text-classification {dtype}"
    if not rig.gpu and fields.get("quantization"):
        return verdict(path, None, "runs on CUDA only")
    rows, opts = sentences(256 if rig.gpu else 32, seed=1), {"top_k": None}
    want = rig.outputs(rig.ref, "classifier", "text-classification", inputs=rows, options=opts, **{
        k: v for k, v in fields.items() if k == "adapter"})[0].to_list()
    got = rig.outputs(rig.main, "classifier", "text-classification", inputs=rows, options=opts, dtype=dtype,
                      **fields)[0].to_list()
    same = float(np.mean([a["labels"][0] == b["labels"][0] for a, b in zip(want, got, strict=True)]))
    diff = max(abs(x - y) for a, b in zip(want, got, strict=True) for x, y in zip(
        [a["scores"][a["labels"].index(n)] for n in a["labels"]],
        [b["scores"][b["labels"].index(n)] for n in a["labels"]], strict=True))
    limit = 0.05 if fields.get("quantization") else SCORE_DIFF[dtype]
    return verdict(path, same >= 0.98 and diff <= limit, f"top label agrees on {same:.1%} of rows (>= 98%), max "
                   f"score difference {diff:.2e} (<= {limit})", label_agreement=same, max_score_diff=diff)


def generation(rig: Rig, dtype: str) -> Verdict:
    path = f"generation {dtype}"
    prompts, opts = sentences(64 if rig.gpu else 16, seed=2), {"max_new_tokens": 16}
    want = rig.outputs(rig.ref, "decoder", "text-generation", inputs=prompts, options=opts)[0]["generated_text"]
    got = rig.outputs(rig.main, "decoder", "text-generation", inputs=prompts, options=opts, dtype=dtype)[0]
    texts = list(got["generated_text"])
    same = float(np.mean([a == b for a, b in zip(list(want), texts, strict=True)]))
    worst = max(greedy_gaps(rig.models["decoder"], prompts, texts, list(got["completion_tokens"]), NEAR_TIE[dtype]))
    gaps = (f"every token within {worst:.4f} float32 logits of its greedy one" if math.isfinite(worst) else
            "a row took a token no near-tie of float32's greedy choice explains")
    return verdict(path, worst <= NEAR_TIE[dtype], f"greedy text equal to CPU float32 on {same:.1%} of rows; {gaps} "
                   f"(<= {NEAR_TIE[dtype]})", same_text=same, max_gap=worst if math.isfinite(worst) else None)


def quantized(rig: Rig, bits: str) -> Verdict:
    path = f"{bits} weights"
    if not rig.gpu or importlib.util.find_spec("bitsandbytes") is None:
        return verdict(path, None, "needs bitsandbytes (carried in the wheelhouse: run `make wheelhouse`)"
                       if rig.gpu else "runs on CUDA only")
    return classification(rig, "float16", path, quantization=bits.replace("-", ""))


def out_of_memory(rig: Rig) -> Verdict:
    path = "out-of-memory back-off"
    if not rig.gpu:
        return verdict(path, None, "a real CUDA out-of-memory error needs a GPU")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(rig.models["wide"])
    text = " ".join(sentences(140, seed=3))  # ~5,000 tokens: past the limit, and little more to tokenize
    assert len(tok(text)["input_ids"]) > 4096, "rows must reach the 4,096-token limit"
    import pyarrow as pa
    import pyarrow.parquet as pq

    # 2,048 rows of ~25 kB: a data file, so chunk messages name row ranges instead of carrying 50 MB of text
    data = rig.work / "long-rows.parquet"
    pq.write_table(pa.table({"text": [f"{i} {text}" for i in range(2048)]}), data)
    before = rig.metric("hfq_oom_splits_total")
    big = vectors(rig.outputs(rig.main, "wide", dataset=str(data), chunk_size=2048, dtype="bfloat16")[0])
    splits = rig.metric("hfq_oom_splits_total") - before
    small = vectors(rig.outputs(rig.main, "wide", dataset=str(data), chunk_size=256, dtype="bfloat16")[0])
    again = rig.metric("hfq_oom_splits_total") - before - splits
    cosine = min_cosine(big, small)
    return verdict(path, splits > 0 and again == 0 and cosine >= 0.999,
                   f"{splits:.0f} splits, then every row; min cosine {cosine:.6f} to chunks that never ran out "
                   f"({again:.0f} splits there)", splits=splits, min_cosine=cosine)


def adapter(rig: Rig) -> Verdict:
    from tests.adapter_models import build_lora

    lora = build_lora(rig.models["classifier"], rig.work / "lora", seed=3,
                      auto_class="AutoModelForSequenceClassification", classifier=True)
    return classification(rig, "float32", "LoRA adapter", adapter=str(lora))


def device_map(rig: Rig) -> Verdict:
    path = "device_map auto"
    if len(rig.gpus) < 2:
        return verdict(path, None, f"needs two or more GPUs ({len(rig.gpus)} here)")
    client = rig._start("map", {"HFQ_BROKER_URL": rig.server.url, "HFQ_OUTPUT_ROOT": str(rig.work / "results"),
                                "HFQ_INPUT_ROOTS": json.dumps([str(rig.work)]), "HFQ_REUSE": "false",
                                "HFQ_DEVICE_MAP": "auto", "HF_HUB_OFFLINE": "1", "HFQ_METRICS_PORT": "0"})
    rows = sentences(128)
    want = vectors(rig.outputs(rig.ref, "encoder", inputs=rows)[0])
    cosine = min_cosine(vectors(rig.outputs(client, "encoder", inputs=rows, dtype="float32")[0]), want)
    devices = sorted({d for w in client.live_workers() if w.queue == "map" for d in w.devices})
    return verdict(path, cosine >= COSINE["float32"], f"min cosine {cosine:.6f}; weights on {devices}",
                   min_cosine=cosine, devices=devices)


def gauges(rig: Rig) -> Verdict:
    path = "GPU memory gauges"
    if not rig.gpu:
        return verdict(path, None, "no CUDA memory to report")
    totals, used = rig.metric("hfq_gpu_memory_total_bytes"), rig.metric("hfq_gpu_memory_allocated_bytes")
    return verdict(path, totals > 0 and used > 0, f"total {totals / 2**30:.1f} GiB, allocated {used / 2**30:.2f} GiB "
                   "over the GPU workers", total=totals, allocated=used)


def worker_devices(rig: Rig) -> Verdict:
    path = "hfq workers devices"
    workers = [w for w in rig.main.live_workers() if w.queue == "gpu"]
    if not rig.gpu:
        ok = len(workers) == 1 and workers[0].device == "cpu"
        return verdict(path, ok, f"{[(w.name, w.device) for w in workers]}")
    apps = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,gpu_uuid", "--format=csv,noheader"],
                          capture_output=True, text=True, check=True).stdout
    uuids = dict(line.split(", ", 1) for line in subprocess.run(
        ["nvidia-smi", "--query-gpu=uuid,index", "--format=csv,noheader"], capture_output=True, text=True,
        check=True).stdout.splitlines() if ", " in line)
    # rows of "pid, uuid"; anything else (a "No running processes found" notice) is not a process
    rows = [line.split(", ") for line in apps.splitlines()]
    on = {int(row[0]): uuids.get(row[1].strip()) for row in rows if len(row) == 2 and row[0].strip().isdigit()}
    # (the GPU its name gives: an index or a UUID, as --gpus all took it; its device; the GPU nvidia-smi runs its pid
    # on: None where the pid namespace hides it)
    pairs = [(w.name.split("@")[0].split("-gpu", 1)[1], w.device, on.get(w.pid)) for w in workers]
    ok = (sorted(entry for entry, _, _ in pairs) == sorted(rig.gpus) and all(d.startswith("cuda") for _, d, _ in pairs)
          and all(g is None or entry.startswith("MIG-") or uuids.get(entry, entry) == g for entry, _, g in pairs))
    return verdict(path, ok, f"(GPU in its name, device, GPU nvidia-smi sees it on): {pairs}")


CHECKS: list[tuple[str, Callable[[Rig], Verdict]]] = [
    ("embeddings float16", lambda r: embeddings(r, "float16")),
    ("embeddings bfloat16", lambda r: embeddings(r, "bfloat16")),
    ("text-classification float16", lambda r: classification(r, "float16")),
    ("text-classification bfloat16", lambda r: classification(r, "bfloat16")),
    ("generation float16", lambda r: generation(r, "float16")),
    ("generation bfloat16", lambda r: generation(r, "bfloat16")),
    ("8-bit weights", lambda r: quantized(r, "8-bit")), ("4-bit weights", lambda r: quantized(r, "4-bit")),
    ("out-of-memory back-off", out_of_memory),
    ("prefetch (float32)", lambda r: embeddings(r, "float32", "prefetch (float32)")),
    ("LoRA adapter", adapter), ("device_map auto", device_map), ("GPU memory gauges", gauges),
    ("hfq workers devices", worker_devices),
]


def run_checks(rig: Rig, deadline: float = math.inf,
               done: Callable[[list[Verdict]], None] = lambda verdicts: None) -> list[Verdict]:
    """Every check in order; one that raises is a FAIL naming the error. Past ``deadline`` (``time.monotonic``) the
    rest are skipped as out of time; ``done`` gets the verdicts so far after each one (to write the report)."""
    out: list[Verdict] = []
    for path, check in CHECKS:
        started = time.monotonic()
        if started >= deadline:
            result = verdict(path, None, "out of time (--budget)")
        else:
            try:
                result = check(rig)
            except Exception as exc:  # noqa: BLE001 - a broken path is a verdict, not the end of the check
                result = verdict(path, False, f"{type(exc).__name__}: {exc}")
        result["seconds"] = round(time.monotonic() - started, 1)
        print(f"{result['status']:<5} {result['path']}: {result['detail']}", flush=True)
        out.append(result)
        done(out)
    return out


def machine_facts(gpus: list[str]) -> dict[str, Any]:
    """What ran the check: GPUs, driver, torch and its CUDA, the date."""
    import torch
    import transformers

    facts: dict[str, Any] = {"date": dt.date.today().isoformat(), "python": platform.python_version(),
                             "torch": torch.__version__, "cuda": torch.version.cuda,
                             "transformers": transformers.__version__, "gpus": len(gpus)}
    if gpus:
        facts["gpu"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                                      capture_output=True, text=True).stdout.splitlines()[0]
    return facts
