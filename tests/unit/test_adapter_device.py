"""Where a PEFT adapter's weights are loaded: on the base model's device, never on the one peft guesses (CUDA whenever
the host has a GPU, so a CPU worker on a GPU machine, or a worker on cuda:1, would touch another device)."""

from __future__ import annotations

from pathlib import Path

import peft.peft_model
import pytest
import transformers

from hfqueue.tasks.base import LoadedModel
from hfqueue.worker.peft_adapters import PeftAdapters
from tests.adapter_models import build_lora
from tests.task_models import build_causal_lm

pytestmark = pytest.mark.timeout(60)


def test_adapter_weights_load_on_the_base_models_device_not_the_one_peft_guesses(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # given a base model on the CPU, on a host where peft would guess CUDA (a CPU worker on a GPU machine; this
    # machine has no CUDA, so loading anything there fails)
    base = build_causal_lm(tmp_path / "base")
    lora = build_lora(base, tmp_path / "lora", seed=1)
    monkeypatch.setattr(peft.peft_model, "infer_device", lambda: "cuda")
    model = transformers.AutoModelForCausalLM.from_pretrained(base).eval()
    adapters = PeftAdapters(LoadedModel(model=model, tokenizer=None, device="cpu", revision=None, name=str(base),
                                        devices=["cpu"]), size=2)

    # when a first and a second adapter are applied (from_pretrained, then load_adapter)
    adapters.name(str(lora), None)
    adapters.name(str(build_lora(base, tmp_path / "lora2", seed=2)), None)

    # then their weights lie beside the base's, on the CPU
    assert {p.device.type for n, p in model.named_parameters() if "lora_" in n} == {"cpu"}
