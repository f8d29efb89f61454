"""Random models for ``make gpu-check``, built on the spot (the GPU host has no network): small ones whose outputs the
checks compare with a CPU float32 run, a wide one that runs out of memory on purpose, and BERT-base- and
GPT-2-small-sized ones for the benchmark. All share the project's small trained tokenizer (tests/tiny_models.py).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.task_models import generation_tokenizer  # noqa: E402
from tests.tiny_models import build_tokenizer, seeded  # noqa: E402

LABELS = ("NEGATIVE", "NEUTRAL", "POSITIVE")


def _save(model: Any, tokenizer: Any, folder: Path) -> Path:
    model.eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def bert(folder: Path, *, hidden: int, layers: int, heads: int, positions: int = 512, head: str = "encoder",
         half: bool = False) -> Path:
    """A random BERT (``head``: ``encoder`` or ``classifier`` with three labels) with standard initialisation."""
    import torch
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(build_tokenizer(folder))
    labels = {"id2label": dict(enumerate(LABELS)), "label2id": {n: i for i, n in enumerate(LABELS)}}
    config = transformers.BertConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers,
                                     num_attention_heads=heads, intermediate_size=4 * hidden,
                                     max_position_embeddings=positions, pad_token_id=tok.pad_token_id,
                                     **(labels if head == "classifier" else {}))
    cls = transformers.BertForSequenceClassification if head == "classifier" else transformers.BertModel
    model = seeded(lambda: cls(config))
    if half:
        model = model.to(torch.bfloat16)  # a wide model saved in half the bytes; jobs load it in their own dtype
    return _save(model, tok, folder)


def decoder(folder: Path, *, hidden: int, layers: int, heads: int) -> Path:
    """A random GPT-2 whose tokenizer pads on the left, with GPT-2's own initialisation (std 0.02): a wider one makes
    the activations large, and so float16's and bfloat16's errors (at 0.3, bfloat16's logits were off by up to 1.3
    on the CPU, at 0.02 by 0.009). Its output head is not tied to its input embeddings: a random tied one mostly
    repeats the last token, whatever the rest of the context, so a padding or position bug would go unseen."""
    import transformers

    tok = generation_tokenizer()
    tok.padding_side = "left"
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    config = transformers.GPT2Config(vocab_size=len(tok), n_positions=1024, n_embd=hidden, n_layer=layers,
                                     n_head=heads, tie_word_embeddings=False, **ids)
    model = seeded(lambda: transformers.GPT2LMHeadModel(config))
    model.generation_config = transformers.GenerationConfig(**ids)
    return _save(model, tok, folder)


def build_all(root: Path, *, gpu: bool) -> dict[str, Path]:
    """Every model the checks and the benchmark use, by role; the wide and the benchmark-sized ones only on a GPU."""
    models = {
        "encoder": bert(root / "encoder", hidden=128, layers=4, heads=4),
        "classifier": bert(root / "classifier", hidden=128, layers=4, heads=4, head="classifier"),
        "decoder": decoder(root / "decoder", hidden=128, layers=4, heads=4),
    }
    if gpu:
        # 4 layers 2,048 wide (~200M parameters), 4,096 positions: a batch of 2,048 rows of 4,096 tokens needs a
        # 2,048 x 4,096 x 8,192 feed-forward activation, 137 GB in bfloat16: more than one H200 holds.
        models["wide"] = bert(root / "wide", hidden=2048, layers=4, heads=16, positions=4096, half=True)
        models["bench-encoder"] = bert(root / "bench-encoder", hidden=768, layers=12, heads=12)
        models["bench-decoder"] = decoder(root / "bench-decoder", hidden=768, layers=12, heads=12)
    return models
