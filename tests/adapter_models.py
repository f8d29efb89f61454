"""PEFT adapters for the tiny test models, built on the spot with peft, and the merged models to check them by.

``build_lora`` puts LoRA layers on a tiny base model with ``init_lora_weights=False`` (random, non-zero
B matrices, so the adapter really changes the outputs), draws them under a given seed and saves the
adapter with ``save_pretrained`` (``adapter_config.json`` names the base folder). ``merged`` loads an
adapter onto its base and folds it into the weights (``merge_and_unload``): what a job with that adapter
must give.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model

# What each tiny base's LoRA layers wrap: GPT-2's fused attention and projections (Conv1D, hence
# fan_in_fan_out), BERT's attention query and value.
TARGETS = {"gpt2": (["c_attn", "c_proj"], True), "bert": (["query", "value"], False)}


@contextmanager
def _peft_quiet() -> Iterator[None]:
    # peft 0.21 reads transformers 5's deprecated `is_gradient_checkpointing` whenever it wraps a model; the
    # warning is about peft's code, not the tests'.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def build_lora(base: Path, path: Path, *, seed: int, auto_class: str = "AutoModelForCausalLM",
               classifier: bool = False, base_name: str | None = "keep") -> Path:
    """A LoRA adapter (r=4) for the model in ``base``, saved in ``path``.

    ``classifier``: also train a copy of the classification head (``modules_to_save``), drawn away from the
    base's. ``base_name``: what ``adapter_config.json`` says the base is (``"keep"``: the ``base`` folder;
    None: nothing).
    """
    model = getattr(transformers, auto_class).from_pretrained(base)
    targets, fan_in_fan_out = TARGETS[model.config.model_type]
    config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, fan_in_fan_out=fan_in_fan_out,
                        init_lora_weights=False, modules_to_save=["classifier"] if classifier else None)
    with torch.random.fork_rng(devices=[]), _peft_quiet():
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, config)
        if classifier:
            head = peft_model.base_model.model.classifier.modules_to_save["default"]
            with torch.no_grad():
                head.weight.add_(torch.randn_like(head.weight))
    peft_model.save_pretrained(path)
    if base_name != "keep":  # save_pretrained writes the base's own name: change it afterwards
        config_file = path / "adapter_config.json"
        saved = json.loads(config_file.read_text())
        config_file.write_text(json.dumps({**saved, "base_model_name_or_path": base_name}))
    return path


def merged(base: Path, adapter: Path, auto_class: str = "AutoModelForCausalLM") -> Any:
    """The base model with the adapter folded into its weights, in eval mode."""
    with _peft_quiet():
        model = PeftModel.from_pretrained(getattr(transformers, auto_class).from_pretrained(base), adapter)
    return model.merge_and_unload().eval()
