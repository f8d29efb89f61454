"""``make bench``: what the result cache saves and what it costs, each as a ratio measured in this one run.

  r1. all-MiniLM-L6-v2 over 2,000 ``pydoc_data`` sentences, cold, with ``reuse`` off and on (the cache emptied
      before each run): the cost of looking rows up and storing them (target: on >= 0.95x off);
  r2. the same 2,000 rows, then those 2,000 plus 200 new ones: the grown job against the first (target: <= 15%
      of its time); its vectors are checked against the same 2,200 rows computed with ``reuse`` off;
  r3. a 100,000-row data file that all hits, end to end from submit to the results read back (target: >= 50,000
      rows/s), on a small random BERT (computing the rows once to store them is not what is timed).

One worker with the model resident (warmed up first), timed from submit to the results read back; each timing is
the best of ``--repeats``. Writes JSON beside the other benchmarks.

    python benchmarks/reuse.py [--repeats 3] [--out benchmarks/results/reuse-cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from embeddings import min_cosine, running_worker  # noqa: E402

from hfqueue import Client  # noqa: E402
from hfqueue.cli.demo import minilm_path, topic_sentences  # noqa: E402


def timed_job(client: Client, model: Path, **fields: Any) -> tuple[np.ndarray, float, int]:
    """Submit, wait, read the vectors back (as Arrow, then one numpy view): (vectors, seconds, rows reused)."""
    started = time.perf_counter()
    job = client.submit(task="feature-extraction", model=str(model), **fields)
    column = job.result(timeout=3600).with_format("arrow")["embedding"].combine_chunks()
    vectors = column.flatten().to_numpy().reshape(len(column), -1)
    return vectors, time.perf_counter() - started, job.status().rows_reused


def tagged(rows: list[str], tag: int) -> list[str]:
    """The rows made new for run ``tag``, so every timed run is cold without emptying the cache under the worker."""
    return [f"{row} [{tag}]" for row in rows]


def small_bert(folder: Path, tokenizer_from: Path) -> Path:
    """A 2-layer BERT of hidden size 64 with random weights and MiniLM's tokenizer: rows cost little to compute."""
    import torch
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(tokenizer_from)
    config = transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=128, max_position_embeddings=512)
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--new-rows", type=int, default=200)
    parser.add_argument("--hit-rows", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/reuse-cpu.json"))
    args = parser.parse_args()
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    import transformers

    minilm = minilm_path()
    distinct = list(dict.fromkeys(topic_sentences(3 * (args.rows + args.new_rows))))  # pydoc repeats some sentences
    sentences = distinct[:args.rows + args.new_rows]
    old = sentences[:args.rows]
    n, out = args.repeats, {}
    with tempfile.TemporaryDirectory() as tmp, running_worker(Path(tmp), {"reuse": True}) as client:
        work = Path(tmp)

        def data_file(name: str, rows: list[str]) -> str:
            pq.write_table(pa.table({"text": rows}), work / f"{name}.parquet")
            return str(work / f"{name}.parquet")

        timed_job(client, minilm, inputs=old[:8], reuse=False)  # warm-up: the worker loads MiniLM once
        # r1: cold, reuse off against on, alternating, each run on rows never seen before
        off, on = [], []
        for k in range(n):
            off.append(timed_job(client, minilm, dataset=data_file(f"off{k}", tagged(old, 100 + k)), reuse=False)[1])
            on.append(timed_job(client, minilm, dataset=data_file(f"on{k}", tagged(old, 200 + k)))[1])
        off, on = sorted(off), sorted(on)  # compared best with best
        # r2: 2,000 new rows, then those plus 200 more
        first, second, reused = [], [], 0
        for k in range(n):
            first.append(timed_job(client, minilm, dataset=data_file(f"first{k}", tagged(old, 300 + k)))[1])
            grown = data_file(f"grown{k}", tagged(sentences, 300 + k))
            vectors, seconds, reused = timed_job(client, minilm, dataset=grown)
            second.append(seconds)
        computed = timed_job(client, minilm, dataset=grown, reuse=False)[0]
        out["r1_cold"] = {"rows": len(old), "reuse_off_s": round(off[0], 3), "reuse_on_s": round(on[0], 3),
                          "on_over_off_speed": round(off[0] / on[0], 3),
                          "median_on_over_off_speed": round(off[len(off) // 2] / on[len(on) // 2], 3)}
        out["r2_grown"] = {"first_rows": len(old), "grown_rows": len(sentences), "rows_reused": reused,
                           "first_s": round(min(first), 3), "grown_s": round(min(second), 3),
                           "grown_over_first_time": round(min(second) / min(first), 3),
                           "max_abs_diff_to_computed": float(np.abs(vectors - computed).max()),
                           "min_cosine_to_computed": round(min_cosine(vectors, computed), 6)}
        # r3: 100,000 rows that all hit
        bert = small_bert(work / "small-bert", minilm)
        many = [f"{sentences[i % len(sentences)]} ({i})" for i in range(args.hit_rows)]
        big = work / "many.parquet"
        pq.write_table(pa.table({"text": many}), big)
        stored, store_s, _ = timed_job(client, bert, dataset=str(big))
        hits = [timed_job(client, bert, dataset=str(big)) for _ in range(n)]
        best = min(hits, key=lambda h: h[1])
        out["r3_all_hit"] = {"rows": len(many), "store_run_s": round(store_s, 3), "all_hit_s": round(best[1], 3),
                             "rows_reused": best[2], "rows_per_s": round(len(many) / best[1], 1),
                             "identical_to_stored": bool(np.array_equal(best[0], stored))}
    for name, row in out.items():
        print(name, json.dumps(row))
    machine = {"cpu_count": os.cpu_count(), "torch": torch.__version__, "platform": platform.platform(),
               "transformers": transformers.__version__}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "model": "all-MiniLM-L6-v2 (r1, r2); random 2-layer BERT (r3)",
                                     "results": out}, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
