"""``make bench`` (generation): hfqueue against per-row ``generate`` and hand-written static batches, same rows.

Two mid-size random models, built here (no download): a 4-layer GPT-2 decoder (256 wide) and a 3+3-layer
BART encoder-decoder (256 wide), both on the project's small trained tokenizer. Prompts are
``pydoc_data.topics`` sentences of mixed lengths; each model's generation config stops at its own end token
or at a second one that greedy decoding reaches in roughly half the rows, so outputs have mixed lengths
too (up to ``--new-tokens``). Contenders, timed after the model is loaded:

  1. per-row ``model.generate`` (greedy), one prompt at a time;
  2. hand-written static batches of 16 length-sorted prompts (left padding for the decoder);
  3. hfqueue end to end: submit an inline job (text-generation / text2text-generation), wait, read results.

Each contender's texts are compared with per-row ``generate``'s: the share of rows whose text is the same (trimmed).

    python benchmarks/generation.py [--rows 384] [--new-tokens 32] [--out benchmarks/results/generation-cpu.json]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from embeddings import running_worker  # noqa: E402

from hfqueue.cli.demo import topic_sentences  # noqa: E402
from tests.task_models import generation_tokenizer  # noqa: E402
from tests.tiny_models import seeded  # noqa: E402


def encode(tok: Any, texts: str | list[str], **kwargs: Any) -> Any:
    """Prompts as the model takes them: ids and mask, no token types (GPT-2 would add an embedding for them)."""
    enc = tok(texts, return_tensors="pt", **kwargs)
    enc.pop("token_type_ids", None)
    return enc


def build(kind: str, folder: Path, prompts: list[str]) -> Path:
    """Save a mid-size random ``kind`` ("decoder" or "encoder-decoder") model and its tokenizer into ``folder``."""
    tok = generation_tokenizer()
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    if kind == "decoder":
        tok.padding_side = "left"
        config = transformers.GPT2Config(vocab_size=len(tok), n_positions=1024, n_embd=256, n_layer=4, n_head=4,
                                         initializer_range=0.1, **ids)
        model = seeded(lambda: transformers.GPT2LMHeadModel(config))
    else:
        ids["decoder_start_token_id"] = tok.bos_token_id
        config = transformers.BartConfig(vocab_size=len(tok), max_position_embeddings=1024, d_model=256,
                                         encoder_layers=3, decoder_layers=3, encoder_attention_heads=4,
                                         decoder_attention_heads=4, encoder_ffn_dim=1024, decoder_ffn_dim=1024,
                                         forced_bos_token_id=None, forced_eos_token_id=None, init_std=0.1, **ids)
        model = seeded(lambda: transformers.BartForConditionalGeneration(config))
    model.eval()
    model.generation_config = transformers.GenerationConfig(**ids)
    # A second stop token, one that greedy decoding reaches in about half of a sample of rows: mixed output lengths.
    # Random weights rarely produce the real end token; the model's own favourite tokens do the job.
    generated = []
    for p in prompts[:32]:
        enc = encode(tok, p)
        seq = model.generate(**enc, max_new_tokens=32, do_sample=False)[0].tolist()
        generated.append(seq[enc["input_ids"].shape[1]:] if kind == "decoder" else seq)
    seen = collections.Counter(t for seq in generated for t in set(seq) if t not in tok.all_special_ids)
    if seen:
        stop = min(seen, key=lambda t: abs(seen[t] - len(generated) / 2))
        model.generation_config.eos_token_id = [tok.eos_token_id, stop]
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def per_row(model: Any, tok: Any, prompts: list[str], new: int) -> list[str]:
    """(1) One ``generate`` call per prompt."""
    out = []
    with torch.inference_mode():
        for p in prompts:
            enc = encode(tok, p)
            ids = model.generate(**enc, max_new_tokens=new, do_sample=False)[0]
            start = enc["input_ids"].shape[1] if not model.config.is_encoder_decoder else 0
            out.append(tok.decode(ids[start:], skip_special_tokens=True))
    return out


def static_batches(model: Any, tok: Any, prompts: list[str], new: int, size: int = 16) -> list[str]:
    """(2) Length-sorted batches of ``size``, padded (left for a decoder), put back in input order."""
    order = sorted(range(len(prompts)), key=lambda i: len(tok(prompts[i])["input_ids"]))
    out: list[str] = [""] * len(prompts)
    with torch.inference_mode():
        for k in range(0, len(order), size):
            index = order[k:k + size]
            enc = encode(tok, [prompts[i] for i in index], padding=True)
            ids = model.generate(**enc, max_new_tokens=new, do_sample=False)
            start = enc["input_ids"].shape[1] if not model.config.is_encoder_decoder else 0
            for i, row in zip(index, ids, strict=True):
                out[i] = tok.decode(row[start:], skip_special_tokens=True)
    return out


def through_hfqueue(folder: Path, task: str, prompts: list[str], new: int, work: Path) -> tuple[list[str], float]:
    """(3) One inline job; the clock runs from submit to the results read back (the model already resident)."""
    with running_worker(work, {}) as client:
        options = {"max_new_tokens": new}
        client.submit(task=task, model=str(folder), inputs=prompts[:4], options=options).wait(600)  # warm-up
        started = time.perf_counter()
        job = client.submit(task=task, model=str(folder), inputs=prompts, options=options, chunk_size=len(prompts))
        texts = job.result(timeout=1800)["generated_text"]
        return list(texts), time.perf_counter() - started


def timed(run: Callable[[], list[str]]) -> tuple[list[str], float]:
    started = time.perf_counter()
    texts = run()
    return texts, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=384)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/generation-cpu.json"))
    args = parser.parse_args()
    prompts = topic_sentences(args.rows)
    table = []
    for kind, task in (("decoder", "text-generation"), ("encoder-decoder", "text2text-generation")):
        with tempfile.TemporaryDirectory() as work:
            folder = build(kind, Path(work) / kind, prompts)
            tok = transformers.AutoTokenizer.from_pretrained(folder)
            tok.padding_side = "left" if kind == "decoder" else "right"
            auto = transformers.AutoModelForCausalLM if kind == "decoder" else transformers.AutoModelForSeq2SeqLM
            model = auto.from_pretrained(folder).eval()
            reference, base = timed(lambda: per_row(model, tok, prompts, args.new_tokens))
            runs = {"1. per-row generate": (reference, base),
                    "2. static batches of 16": timed(lambda: static_batches(model, tok, prompts, args.new_tokens)),
                    "3. hfqueue end to end": through_hfqueue(folder, task, prompts, args.new_tokens, Path(work))}
            lengths = [len(tok(t)["input_ids"]) for t in reference]  # the texts re-tokenized: mixed lengths show
            for name, (texts, seconds) in runs.items():
                # Compared trimmed: hfqueue returns a continuation without its leading space.
                same = sum(a.strip() == b.strip() for a, b in zip(texts, reference, strict=True)) / len(reference)
                table.append({"model": kind, "contender": name, "rows": len(prompts), "seconds": round(seconds, 2),
                              "rows_per_s": round(len(prompts) / seconds, 1), "x_per_row": round(base / seconds, 2),
                              "same_text_as_per_row": round(same, 3),
                              "output_text_tokens_min_mean_max": [min(lengths), round(sum(lengths) / len(lengths), 1),
                                                             max(lengths)]})
    print(f"{'model':16} {'contender':28} {'rows/s':>8} {'x per-row':>10} {'same text':>10}")
    for row in table:
        print(f"{row['model']:16} {row['contender']:28} {row['rows_per_s']:8.1f} {row['x_per_row']:10.2f} "
              f"{row['same_text_as_per_row']:10.3f}")
    machine = {"cpu_count": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
               "platform": platform.platform(), "transformers": transformers.__version__}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "results": table}, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
