"""``make bench``: hfqueue against the plain ways of embedding a dataset, side by side, on the same rows.

Every contender embeds the same 2,000 sentences of ``pydoc_data.topics`` with all-MiniLM-L6-v2 (mean
pooling, normalized), timed after its model is loaded (a worker keeps its model resident, so a
job never pays the load):

  a. hfqueue end to end: save the rows as a dataset, submit, wait, read the results (one worker);
     a2. the same with the next batch collated on a helper thread (off by default on CPU);
     a3. the same in bfloat16 (the job's dtype; float32 is what auto means on a CPU);
     a4. the same on the exported engines (job option engine: onnx, onnx-int8), exported once before timing;
  b. ``pipeline("feature-extraction")`` over ``KeyDataset`` with batch_size 32, pooled afterwards;
  c. sentence-transformers ``encode(batch_size=64)``;
  d. a hand-written loop over length-sorted batches of 64 (the fastest plain loop we know to write);
     d1. the same model one row at a time, in process: (d) / (d1) is the most any batching can gain here;
     d2. the same loop with the model in bfloat16;
  e. one-row ``client.infer`` calls from many producer threads, request coalescing on and off
     (rows/s, p50 and p99 latency);
  f. one-row jobs (``client.submit``) from many producer threads, through the request lane (small jobs
     share forward passes) and through the chunk queue (``HFQ_SMALL_JOB_ROWS=0``).

(a)-(d) run ``--repeats`` times each and keep their best time; (e) and (f) are long runs of their own.
Prints one table (rows/s and the ratio to the plain loop) and writes it as JSON. Each contender's
vectors are checked against the plain loop's (max difference, min cosine, nearest-neighbour overlap@10), so a
fast wrong answer cannot win.

    python benchmarks/embeddings.py [--rows 2000] [--out benchmarks/results/embeddings-cpu.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hfqueue import Client, Settings  # noqa: E402
from hfqueue.cli.demo import minilm_path, topic_sentences  # noqa: E402
from hfqueue.state.embedded import RedisServer  # noqa: E402


def plain_loop(model: Any, tok: Any, rows: list[str], batch_size: int = 64, device: str = "cpu") -> np.ndarray:
    """(d) Sort by token length, embed batches of 64, put the vectors back in input order (the model on
    ``device``: the GPU benchmark's hand-written loop is this one, on CUDA in float16)."""
    lengths = [len(ids) for ids in tok(rows, truncation=True, max_length=512)["input_ids"]]
    order = sorted(range(len(rows)), key=lengths.__getitem__, reverse=True)
    out = np.zeros((len(rows), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            index = order[start:start + batch_size]
            enc = tok([rows[i] for i in index], padding=True, truncation=True, max_length=512,
                      return_tensors="pt").to(device)
            out[index] = _pool(model(**enc).last_hidden_state.float(), enc["attention_mask"]).cpu().numpy()
    return out


def one_row_loop(model: Any, tok: Any, rows: list[str]) -> np.ndarray:
    """(d1) The same model one row at a time: no padding, no batching."""
    out = np.zeros((len(rows), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for i, row in enumerate(rows):
            enc = tok([row], truncation=True, max_length=512, return_tensors="pt")
            out[i] = _pool(model(**enc).last_hidden_state, enc["attention_mask"]).numpy()
    return out


def _pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=1)


def pipeline_keydataset(path: Path, rows: list[str], repeats: int) -> tuple[np.ndarray, float]:
    """(b) The transformers pipeline over a KeyDataset, batch_size 32, each row's token vectors pooled."""
    import datasets
    import transformers
    from transformers.pipelines.pt_utils import KeyDataset

    pipe = transformers.pipeline("feature-extraction", model=str(path), return_tensors=True)
    data = KeyDataset(datasets.Dataset.from_dict({"text": rows}), "text")

    def run() -> np.ndarray:
        vectors = []
        lengths = [len(ids) for ids in pipe.tokenizer(rows, truncation=True, max_length=512)["input_ids"]]
        for out, length in zip(pipe(data, batch_size=32, truncation=True, max_length=512), lengths, strict=True):
            hidden = (out[0] if out.dim() == 3 else out)[:length]  # a batched row keeps its padding: cut it off
            vectors.append(_pool(hidden.unsqueeze(0), torch.ones(1, length))[0].numpy())
        return np.stack(vectors)

    return best_of(repeats, run)


def sentence_transformers_encode(path: Path, rows: list[str], repeats: int) -> tuple[np.ndarray, float]:
    """(c) sentence-transformers' encode, batch 64, normalized."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(path), device="cpu")
    return best_of(repeats, lambda: model.encode(rows, batch_size=64, normalize_embeddings=True,
                                                 convert_to_numpy=True))


@contextlib.contextmanager
def running_worker(work: Path, overrides: dict[str, Any]) -> Iterator[Client]:
    """A real redis-server and one real worker with ``overrides``; yields a client once the worker answers.

    The result cache is off unless ``overrides`` turn it on: these contenders are timed computing their rows."""
    overrides = {"reuse": False, **overrides}
    with RedisServer(work / "redis") as server:
        # The worker checks a job's paths against its own roots: give it the same ones as the client.
        roots = [work, minilm_path()]
        settings = Settings(broker_url=server.url, output_root=work / "results", state_dir=work / "state",
                            input_roots=roots, **overrides)
        env = {**os.environ, "HFQ_BROKER_URL": server.url, "HF_HUB_OFFLINE": "1",
               "HFQ_OUTPUT_ROOT": str(work / "results"), "HFQ_INPUT_ROOTS": json.dumps([str(r) for r in roots]),
               **{f"HFQ_{k.upper()}": str(v).lower() if isinstance(v, bool) else str(v) for k, v in overrides.items()}}
        worker = subprocess.Popen([sys.executable, "-m", "hfqueue", "worker", "--name", "bench@local"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with Client(settings) as client:
                while not client.workers():
                    time.sleep(0.2)
                yield client
        finally:
            worker.terminate()
            worker.wait(60)


def min_cosine(vectors: np.ndarray, reference: np.ndarray) -> float:
    """The lowest cosine similarity between a row's vector and the reference vector of the same row."""
    a = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    b = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())


def neighbour_overlap(vectors: np.ndarray, reference: np.ndarray, k: int = 10) -> float:
    """The mean share of each row's k nearest rows (by cosine, itself excluded) that the reference agrees on: what a
    search index built on these vectors would return differently."""
    def neighbours(x: np.ndarray) -> np.ndarray:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        sims = x @ x.T
        np.fill_diagonal(sims, -np.inf)
        return np.argsort(-sims, axis=1)[:, :k]

    if len(vectors) <= k:
        return 1.0
    mine, theirs = neighbours(vectors), neighbours(reference)
    return float(np.mean([len(set(m) & set(t)) / k for m, t in zip(mine, theirs, strict=True)]))


def best_of(repeats: int, run: Callable[[], np.ndarray]) -> tuple[np.ndarray, float]:
    """The vectors and the shortest time of ``repeats`` runs: every contender gets the same treatment, and
    the best run is the least disturbed by whatever else the machine was doing."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        vectors = run()
        times.append(time.perf_counter() - started)
    return vectors, min(times)


def hfqueue_end_to_end(path: Path, rows: list[str], work: Path, repeats: int,
                       overrides: dict[str, Any] | None = None) -> tuple[np.ndarray, float]:
    """(a) One worker; the clock runs from submit to the results read back."""
    import datasets

    with running_worker(work, overrides or {}) as client:
        options = {"normalize": True}
        # Warm-up: the worker loads and keeps the model, as it would for the first job of the day.
        client.submit(task="feature-extraction", model=str(path), inputs=rows[:8], options=options).wait(300)
        folder = work / "rows"
        datasets.Dataset.from_dict({"text": rows}).save_to_disk(folder)

        def job() -> np.ndarray:
            submitted = client.submit(task="feature-extraction", model=str(path), dataset=str(folder), options=options)
            return np.asarray(submitted.result(timeout=1800).with_format("numpy")["embedding"], dtype=np.float32)

        return best_of(repeats, job)


def single_row_requests(path: Path, rows: list[str], work: Path, coalesce: bool, producers: int
                        ) -> dict[str, Any]:
    """(e) One request per row from ``producers`` threads through client.infer; rows/s and latency."""
    with running_worker(work, {"coalesce_requests": coalesce}) as client:
        options = {"normalize": True}
        client.infer("feature-extraction", rows[:2], str(path), options=options, timeout=300)  # warm-up

        def call(row: str) -> list[float]:
            return client.infer("feature-extraction", [row], str(path), options=options, timeout=300)[0]["embedding"]

        return timed_calls(call, rows, producers)


def timed_calls(call: Callable[[str], list[float]], rows: list[str], producers: int) -> dict[str, Any]:
    """``call`` once per row from ``producers`` threads: the vectors, the wall time and p50/p99 latency."""
    def timed(row: str) -> tuple[list[float], float]:
        started = time.perf_counter()
        return call(row), time.perf_counter() - started

    started = time.perf_counter()
    with ThreadPoolExecutor(producers) as pool:
        answers = list(pool.map(timed, rows))
    seconds = time.perf_counter() - started
    latencies = np.array([lat for _, lat in answers]) * 1000
    return {"vectors": np.asarray([v for v, _ in answers], dtype=np.float32), "seconds": seconds,
            "p50_ms": float(np.percentile(latencies, 50)), "p99_ms": float(np.percentile(latencies, 99))}


def one_row_jobs(path: Path, rows: list[str], work: Path, lane: bool, producers: int) -> dict[str, Any]:
    """(f) One job per row from ``producers`` threads, each waiting for its job; rows/s and latency."""
    import pyarrow.parquet as pq

    with running_worker(work, {"small_job_rows": 64 if lane else 0}) as client:
        options = {"normalize": True}
        client.submit(task="feature-extraction", model=str(path), inputs=rows[:2], options=options).wait(300)

        def call(row: str) -> list[float]:
            job = client.submit(task="feature-extraction", model=str(path), inputs=[row], options=options)
            job.wait(300)
            return pq.read_table(job.output_dir / "part-00000.parquet")["embedding"][0].as_py()

        return timed_calls(call, rows, producers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3, help="runs of (a)-(d); each contender's best counts")
    parser.add_argument("--requests", type=int, default=1000, help="one-row infer calls in (e)")
    parser.add_argument("--producers", type=int, default=16, help="threads making the calls in (e) and (f)")
    parser.add_argument("--jobs", type=int, default=300, help="one-row jobs in (f)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/embeddings-cpu.json"))
    args = parser.parse_args()

    import transformers

    path = minilm_path()
    rows = topic_sentences(args.rows)
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).eval()
    n = args.repeats
    results: dict[str, tuple[np.ndarray, float]] = {
        "d. plain loop, sorted batches of 64": best_of(n, lambda: plain_loop(model, tok, rows))}
    reference = results["d. plain loop, sorted batches of 64"][0]
    half = transformers.AutoModel.from_pretrained(path, dtype=torch.bfloat16).eval()
    results["d2. plain loop in bfloat16"] = best_of(n, lambda: plain_loop(half, tok, rows))
    results["d1. plain loop, one row at a time"] = best_of(n, lambda: one_row_loop(model, tok, rows[:args.requests]))
    results["b. pipeline + KeyDataset, batch 32"] = pipeline_keydataset(path, rows, n)
    results["c. sentence-transformers encode, batch 64"] = sentence_transformers_encode(path, rows, n)
    with tempfile.TemporaryDirectory() as work:
        results["a. hfqueue end to end, 1 worker"] = hfqueue_end_to_end(path, rows, Path(work), n)
    with tempfile.TemporaryDirectory() as work:
        results["a2. the same, next batch prefetched (HFQ_PREFETCH_BATCHES=true)"] = hfqueue_end_to_end(
            path, rows, Path(work), n, {"prefetch_batches": True})
    with tempfile.TemporaryDirectory() as work:
        results["a3. the same in bfloat16 (dtype=bfloat16)"] = hfqueue_end_to_end(path, rows, Path(work), n,
                                                                                {"dtype": "bfloat16"})
    for engine in ("onnx", "onnx-int8"):
        with tempfile.TemporaryDirectory() as work:
            results[f"a4. the same on engine {engine}"] = hfqueue_end_to_end(
                path, rows, Path(work), n, {"engine": engine, "engine_cache": Path(work) / "engines"})
    latency: dict[str, dict[str, float]] = {}

    def record(name: str, run: Callable[[Path], dict[str, Any]]) -> None:
        with tempfile.TemporaryDirectory() as work:
            out = run(Path(work))
        results[name] = (out["vectors"], out["seconds"])
        latency[name] = {"p50_ms": round(out["p50_ms"], 1), "p99_ms": round(out["p99_ms"], 1)}

    for on in (True, False):
        record(f"e. {args.requests} one-row infer calls, {args.producers} threads, coalescing {'on' if on else 'off'}",
               lambda work: single_row_requests(path, rows[:args.requests], work, on, args.producers))
    for on in (True, False):
        record(f"f. {args.jobs} one-row jobs, {args.producers} threads, {'request lane' if on else 'chunk queue'}",
               lambda work: one_row_jobs(path, rows[:args.jobs], work, on, args.producers))

    base = len(rows) / results["d. plain loop, sorted batches of 64"][1]
    table = []
    for name in sorted(results):
        vectors, seconds = results[name]
        n = len(vectors)
        table.append({"contender": name, "rows": n, "seconds": round(seconds, 2), "rows_per_s": round(n / seconds, 1),
                      "ratio_to_plain_loop": round(n / seconds / base, 2),
                      "max_abs_diff_to_plain_loop": float(np.abs(vectors - reference[:n]).max()),
                      "min_cosine_to_plain_loop": round(min_cosine(vectors, reference[:n]), 6),
                      "neighbour_overlap_at_10": round(neighbour_overlap(vectors, reference[:n]), 3),
                      **latency.get(name, {})})
    print(f"{'contender':70} {'rows/s':>8} {'x loop':>7} {'max |diff|':>11} {'min cos':>9} {'nn@10':>6} "
          f"{'p50 ms':>8} {'p99 ms':>8}")
    for row in table:
        print(f"{row['contender']:70} {row['rows_per_s']:8.1f} {row['ratio_to_plain_loop']:7.2f} "
              f"{row['max_abs_diff_to_plain_loop']:11.1e} {row['min_cosine_to_plain_loop']:9.6f} "
              f"{row['neighbour_overlap_at_10']:6.3f} {row.get('p50_ms', ''):>8} {row.get('p99_ms', ''):>8}")
    rate = {row["contender"]: row["rows_per_s"] for row in table}

    def ratio(top: str, bottom: str) -> float:
        pick = lambda part: next(v for k, v in rate.items() if part in k)  # noqa: E731
        return round(pick(top) / pick(bottom), 2)

    summary = {"a_over_c": ratio("a. ", "c. "), "a_over_d": ratio("a. ", "d. "), "a3_over_d": ratio("a3. ", "d. "),
               "a4_onnx_over_d": ratio("engine onnx", "d. "), "a4_int8_over_d": ratio("engine onnx-int8", "d. "),
               "e_on_over_off": ratio("coalescing on", "coalescing off"),
               "f_lane_over_chunk_queue": ratio("request lane", "chunk queue"),
               "batching_ceiling_d_over_d1": ratio("d. ", "d1. ")}
    print("ratios:", ", ".join(f"{k} {v}" for k, v in summary.items()))
    machine = {"cpu_count": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
               "platform": platform.platform(), "transformers": transformers.__version__}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "model": "all-MiniLM-L6-v2", "results": table,
                                     "ratios": summary}, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
