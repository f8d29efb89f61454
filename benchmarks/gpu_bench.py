"""The GPU benchmark of ``make gpu-check``: hfqueue end to end against the plain ways, on the same rows, same GPU.

  embeddings, a BERT-base-sized random encoder (12 layers, 768 wide): hfqueue (a float16 dataset job, one GPU
  worker) against a hand-written float16 loop over length-sorted batches of 128 and the per-row pipeline
  (``pipeline("feature-extraction")``, one row per call; timed on a slice). Targets: >= 0.95x the loop, >= 10x
  the per-row pipeline.
  generation, a GPT-2-small-sized random decoder (~100M parameters): hfqueue (a float16 inline job) against
  per-row ``model.generate`` in float16 (on a slice), 32 new tokens, greedy. Target: >= 5x.

Writes ``gpu-bench.json`` and ``gpu-bench.md`` (the README's GPU table is built from it). With ``--cpu`` the same
code runs on tiny sizes in float32, so it cannot rot; its numbers mean nothing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from embeddings import plain_loop
from gpu_answers import min_cosine, vectors
from gpu_paths import Rig, verdict

from hfqueue.cli.demo import topic_sentences


def _timed(run: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    value = run()
    return value, time.perf_counter() - started


def embeddings(rig: Rig, rows: list[str], device: str, dtype: Any) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    import transformers

    folder = rig.models["bench-encoder" if rig.gpu else "encoder"]
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModel.from_pretrained(folder, dtype=dtype).to(device).eval()
    plain_loop(model, tok, rows[:256], 128, device)  # warm-up: kernels, allocator
    loop, loop_s = _timed(lambda: plain_loop(model, tok, rows, 128, device))
    pipe = transformers.pipeline("feature-extraction", model=str(folder), device=device, dtype=dtype)
    one = rows[: max(8, len(rows) // 40)]
    _, pipe_s = _timed(lambda: [pipe(r, truncation=True, max_length=512) for r in one])
    del model, pipe
    if rig.gpu:
        torch.cuda.empty_cache()
    data = rig.work / "bench-rows.parquet"
    pq.write_table(pa.table({"text": rows}), data)
    job_dtype = "float16" if rig.gpu else "float32"
    rig.outputs(rig.main, "bench-encoder" if rig.gpu else "encoder", inputs=rows[:64], dtype=job_dtype)  # warm-up
    (ds, _), hfq_s = _timed(lambda: rig.outputs(rig.main, "bench-encoder" if rig.gpu else "encoder",
                                                 dataset=str(data), dtype=job_dtype))
    rates = {"hfqueue": len(rows) / hfq_s, "loop": len(rows) / loop_s, "per_row_pipeline": len(one) / pipe_s}
    return {"rows": len(rows), "rows_per_s": {k: round(v, 1) for k, v in rates.items()},
            "hfqueue_over_loop": round(rates["hfqueue"] / rates["loop"], 3),
            "hfqueue_over_per_row": round(rates["hfqueue"] / rates["per_row_pipeline"], 2),
            "min_cosine_to_loop": round(min_cosine(vectors(ds), loop), 6)}


def generation(rig: Rig, prompts: list[str], device: str, dtype: Any, new: int) -> dict[str, Any]:
    import torch
    import transformers

    folder = rig.models["bench-decoder" if rig.gpu else "decoder"]
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
    one = prompts[: max(8, len(prompts) // 16)]

    def per_row() -> None:
        with torch.inference_mode():
            for p in one:
                enc = tok(p, return_tensors="pt").to(device)
                enc.pop("token_type_ids", None)
                model.generate(**enc, max_new_tokens=new, min_new_tokens=new, do_sample=False)

    per_row()  # warm-up
    _, row_s = _timed(per_row)
    del model
    if rig.gpu:
        torch.cuda.empty_cache()
    opts = {"max_new_tokens": new, "min_new_tokens": new}
    name, job_dtype = ("bench-decoder", "float16") if rig.gpu else ("decoder", "float32")
    rig.outputs(rig.main, name, "text-generation", inputs=prompts[:16], options=opts, dtype=job_dtype)  # warm-up
    _, hfq_s = _timed(lambda: rig.outputs(rig.main, name, "text-generation", inputs=prompts, options=opts,
                                          dtype=job_dtype))
    rates = {"hfqueue": len(prompts) / hfq_s, "per_row_generate": len(one) / row_s}
    return {"prompts": len(prompts), "new_tokens": new, "rows_per_s": {k: round(v, 1) for k, v in rates.items()},
            "hfqueue_over_per_row": round(rates["hfqueue"] / rates["per_row_generate"], 2)}


def run_bench(rig: Rig, out: Path) -> dict[str, Any]:
    """Both benchmarks; their results written under ``out``; a verdict against the targets."""
    import torch

    device, dtype = ("cuda", torch.float16) if rig.gpu else ("cpu", torch.float32)
    rows = topic_sentences(20_000 if rig.gpu else 200)
    emb = embeddings(rig, rows, device, dtype)
    gen = generation(rig, rows[: 512 if rig.gpu else 32], device, dtype, 32 if rig.gpu else 4)
    out.mkdir(parents=True, exist_ok=True)
    name = "gpu-bench" if rig.gpu else "gpu-bench-cpu-smoke"
    (out / f"{name}.json").write_text(json.dumps({"embeddings": emb, "generation": gen}, indent=2) + "\n")
    lines = ["| model | hfqueue rows/s | hand-written fp16 loop | per-row | hfqueue / loop | hfqueue / per-row |",
             "|---|---|---|---|---|---|",
             f"| BERT-base-sized encoder, {emb['rows']} rows | {emb['rows_per_s']['hfqueue']} | "
             f"{emb['rows_per_s']['loop']} | {emb['rows_per_s']['per_row_pipeline']} (pipeline) | "
             f"{emb['hfqueue_over_loop']} | {emb['hfqueue_over_per_row']} |",
             f"| ~100M decoder, {gen['prompts']} prompts x {gen['new_tokens']} tokens | {gen['rows_per_s']['hfqueue']} "
             f"| | {gen['rows_per_s']['per_row_generate']} (generate) | | {gen['hfqueue_over_per_row']} |"]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    met = emb["hfqueue_over_loop"] >= 0.95 and emb["hfqueue_over_per_row"] >= 10 and gen["hfqueue_over_per_row"] >= 5
    detail = (f"embeddings {emb['hfqueue_over_loop']}x the fp16 loop (>= 0.95), {emb['hfqueue_over_per_row']}x per-row "
              f"(>= 10), min cosine {emb['min_cosine_to_loop']}; generation {gen['hfqueue_over_per_row']}x per-row "
              "generate (>= 5)")
    return verdict("benchmark", met if rig.gpu else None,
                   detail if rig.gpu else f"CPU smoke run of the benchmark code (numbers meaningless): {detail}",
                   embeddings=emb, generation=gen)
