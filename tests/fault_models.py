"""A tiny encoder that misbehaves on purpose, for the fault tests: it is slow, and some rows break it.

It is the tiny BERT of :mod:`tests.tiny_models` loaded through ``trust_remote_code`` (the model folder
ships ``fault_bert.py``), so workers load and run it through the same code path as any Hub model with
custom code. Its forward pass

* sleeps ``fault_delay_s`` seconds per batch, so a chunk is still running when a test kills something;
* raises ``ValueError`` for a batch holding a row with ``[UNK]`` in its text (a *poison row*: the
  worker must isolate it and put it in the error file);
* SIGKILLs its own process for a batch holding a row with ``[MASK]`` (a row that *crashes the process
  every time*: the worker must give up on its chunk after ``HFQ_MAX_ATTEMPTS``);
* raises ``torch.OutOfMemoryError`` (what CUDA raises) for a batch of more than ``fault_oom_tokens``
  padded tokens, when set: the worker must split the batch and shrink its token budget;
* hangs for ``fault_hang_s`` seconds, when set, swallowing every exception meanwhile (as a stuck native
  call would the soft time limit): only the hard time limit ends it;
* returns NaN hidden states when it runs in a reduced precision (bfloat16, float16) and ``fault_nan_reduced``
  is set, as a model whose activations overflow there would: the worker must run the batch again in float32.

Both markers are special tokens of the tiny tokenizer, so they arrive as single ids and no ordinary
sentence produces them.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.tiny_models import build_encoder

POISON = "[UNK]"
CRASH = "[MASK]"

_CODE = '''
import os
import signal
import time

import torch
from transformers import BertConfig, BertModel


class FaultConfig(BertConfig):
    model_type = "fault-bert"

    def __init__(self, fault_delay_s=0.0, fault_poison_id=-1, fault_crash_id=-1, fault_oom_tokens=-1,
                 fault_hang_s=0.0, fault_nan_reduced=False, **kwargs):
        super().__init__(**kwargs)
        self.fault_nan_reduced = fault_nan_reduced
        self.fault_hang_s = fault_hang_s
        self.fault_oom_tokens = fault_oom_tokens
        self.fault_delay_s = fault_delay_s
        self.fault_poison_id = fault_poison_id
        self.fault_crash_id = fault_crash_id


class FaultModel(BertModel):
    config_class = FaultConfig

    def forward(self, input_ids=None, **kwargs):
        if input_ids is not None and bool((input_ids == self.config.fault_crash_id).any()):
            os.kill(os.getpid(), signal.SIGKILL)
        if input_ids is not None and bool((input_ids == self.config.fault_poison_id).any()):
            raise ValueError("poison row: this model refuses [UNK]")
        if input_ids is not None and 0 < self.config.fault_oom_tokens < input_ids.numel():
            raise torch.OutOfMemoryError(f"CUDA out of memory (injected: {input_ids.numel()} tokens)")
        until = time.monotonic() + self.config.fault_hang_s
        while time.monotonic() < until:
            try:
                time.sleep(0.1)
            except BaseException:
                pass
        time.sleep(self.config.fault_delay_s)
        out = super().forward(input_ids=input_ids, **kwargs)
        if self.config.fault_nan_reduced and self.dtype != torch.float32:
            out.last_hidden_state = torch.full_like(out.last_hidden_state, float("nan"))
        return out
'''


def build_fault_encoder(path: Path, delay_s: float = 0.0, oom_tokens: int = -1, hang_s: float = 0.0,
                        nan_reduced: bool = False) -> Path:
    """Save the misbehaving encoder into ``path``; it needs a worker with ``HFQ_ALLOW_REMOTE_CODE=true``.

    It has the weights of :func:`tests.tiny_models.build_encoder`'s model, so where it does not misbehave
    its outputs equal that model's.
    """
    build_encoder(path)
    vocab = json.loads((path / "tokenizer.json").read_text())["model"]["vocab"]
    config = json.loads((path / "config.json").read_text())
    config.update(model_type="fault-bert", architectures=["FaultModel"],
                  auto_map={"AutoConfig": "fault_bert.FaultConfig", "AutoModel": "fault_bert.FaultModel"},
                  fault_delay_s=delay_s, fault_oom_tokens=oom_tokens, fault_hang_s=hang_s, fault_poison_id=vocab[POISON],
                  fault_crash_id=vocab[CRASH], fault_nan_reduced=nan_reduced)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    (path / "fault_bert.py").write_text(_CODE)
    return path
