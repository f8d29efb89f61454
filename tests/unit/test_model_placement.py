"""Where models go and what goes on them: HFQ_DEVICE_MAP / HFQ_MAX_MEMORY checked when settings are built, the
devices a spread model lists, how ``hfq workers`` shows them, and how an adapter's base is matched to a job's model."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import transformers

from hfqueue.cli.views import workers_table
from hfqueue.core.config import load_settings
from hfqueue.errors import ConfigError
from hfqueue.state.presence import WorkerInfo
from hfqueue.tasks.loading import placement
from hfqueue.worker.peft_adapters import same_model

pytestmark = pytest.mark.timeout(30)


def test_max_memory_is_read_as_json_and_normalized(monkeypatch: pytest.MonkeyPatch) -> None:
    # given a device map and memory limits in the environment, written loosely
    monkeypatch.setenv("HFQ_DEVICE_MAP", "auto")
    monkeypatch.setenv("HFQ_MAX_MEMORY", '{"0": "70 GiB", "01": "69.5GiB", "cpu": "200GB"}')

    # when the settings are built, then the limits are kept with GPU indexes and sizes written one way
    assert load_settings().max_memory == {"0": "70GiB", "1": "69.5GiB", "cpu": "200GB"}


@pytest.mark.parametrize(("limits", "reason"), [
    ('{"cuda:0": "70GiB"}', "keys are GPU indexes"),
    ('{"gpu": "70GiB"}', "keys are GPU indexes"),
    ('{"0": "70"}', "must be a number with a unit"),
    ('{"0": "70Gb"}', "must be a number with a unit"),  # accelerate reads a lower-case b as bits
    ('{"0": "1TiB"}', "must be a number with a unit"),  # accelerate has no TiB
    ('{"0": "lots"}', "must be a number with a unit"),
    ('{"0": "1GiB", "00": "2GiB"}', "GPU 0 is named twice"),
    ("{}", "give at least one device"),
    ('["70GiB"]', "valid dictionary"),
])
def test_bad_max_memory_is_refused_naming_the_variable(monkeypatch: pytest.MonkeyPatch, limits: str,
                                                         reason: str) -> None:
    # given a device map and bad memory limits
    monkeypatch.setenv("HFQ_DEVICE_MAP", "auto")
    monkeypatch.setenv("HFQ_MAX_MEMORY", limits)

    # when the settings are built, then they are refused, naming the variable and why
    with pytest.raises(ConfigError, match=rf"HFQ_MAX_MEMORY: .*{reason}"):
        load_settings()


@pytest.mark.parametrize(("overrides", "reason"), [
    ({"max_memory": {"cpu": "2GiB"}}, "HFQ_MAX_MEMORY only applies with HFQ_DEVICE_MAP=auto"),
    ({"device_map": "auto", "device": "cuda:1"}, "HFQ_DEVICE=cuda:1 contradicts"),
    ({"device_map": "auto", "device": "mps"}, "HFQ_DEVICE=mps contradicts"),
    ({"device_map": "auto", "device": "cpu"}, "HFQ_DEVICE=cpu with HFQ_DEVICE_MAP=auto needs HFQ_MAX_MEMORY"),
    ({"device_map": "auto", "device": "cpu", "max_memory": {"0": "1GiB", "cpu": "2GiB"}}, "naming only \"cpu\""),
    ({"device_map": "balanced"}, "HFQ_DEVICE_MAP: Input should be 'auto'"),
])
def test_device_map_settings_that_contradict_each_other_are_refused(overrides: dict[str, object],
                                                                     reason: str) -> None:
    # given settings whose device map, device and memory limits do not agree
    # when they are built, then they are refused saying what to change
    with pytest.raises(ConfigError, match=reason):
        load_settings(**overrides)


@pytest.mark.parametrize("overrides", [
    {"device_map": "auto"},
    {"device_map": "auto", "device": "cuda", "max_memory": {"0": "70GiB", "1": "70GiB", "cpu": "200GiB"}},
    {"device_map": "auto", "device": "cpu", "max_memory": {"cpu": "2GiB"}},
])
def test_coherent_device_map_settings_are_accepted(overrides: dict[str, object]) -> None:
    assert load_settings(**overrides).device_map == "auto"


def test_a_spread_model_lists_its_gpus_first() -> None:
    # given a real tiny model, once on one device and once as accelerate records a model spread over devices
    config = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=8, n_layer=1, n_head=2)
    model = transformers.GPT2LMHeadModel(config)
    assert placement(model) == ["cpu"]

    # when its device map puts layers on GPUs 0, 1 and 10, the CPU and disk
    model.hf_device_map = {"transformer.wte": 0, "transformer.h.0": 10, "transformer.h.1": 1, "transformer.ln_f": "cpu",
                           "lm_head": "disk"}

    # then the devices are listed once each, GPUs first in index order
    assert placement(model) == ["cuda:0", "cuda:1", "cuda:10", "cpu", "disk"]


def test_hfq_workers_shows_devices_commits_and_adapters() -> None:
    # given a worker spread over two GPUs holding a model with two adapters, and one on the CPU
    models = [{"task": "text-generation", "model": "big/model", "devices": ["cuda:0", "cuda:1"],
               "adapters": ["org/lora-a", "org/lora-b"], "version": "0f5ce2de2fe2011c2e4aa2e24f7eb9b9d7f8f502"}]
    spread = WorkerInfo(name="w-big", host="h", pid=1, queue="q", device="cuda", devices=["cuda:0", "cuda:1"],
                        models=models, started_at=time.time())
    plain = WorkerInfo(name="w-cpu", host="h", pid=2, queue="q", device="cpu", devices=["cpu"], started_at=time.time())

    # when `hfq workers` prints them as text
    text = workers_table([spread, plain], terminal=False)

    # then each row shows its devices, and the model at its commit with its adapter count
    assert isinstance(text, str)
    big, cpu = text.splitlines()[1:]
    assert big.split("  ")[0] == "w-big"
    assert "  cuda:0, cuda:1  big/model@0f5ce2d (text-generation + 2 adapters)  " in big
    assert cpu.split()[:3] == ["w-cpu", "cpu", "-"]


def test_an_adapters_base_is_matched_sensibly(tmp_path: Path) -> None:
    # given a model folder, a symlink to it and another folder
    model = tmp_path / "models" / "Llama-3-8B"
    model.mkdir(parents=True)
    (tmp_path / "link").symlink_to(model)
    (tmp_path / "other").mkdir()

    # then local folders match when they are the same folder, however named
    assert same_model(str(tmp_path / "link"), str(model))
    assert same_model(str(model / ".." / "Llama-3-8B"), str(model))
    assert not same_model(str(tmp_path / "other"), str(model))
    # and Hub ids match when equal, case aside, and not across organisations or sizes
    assert same_model("Meta-Llama/Llama-3-8B", "meta-llama/llama-3-8b")
    assert not same_model("alice/Llama-3-8B", "bob/Llama-3-8B")
    assert not same_model("meta-llama/Llama-3-8B", "meta-llama/Llama-3-70B")
    # and a Hub id matches a local copy or a Hub cache snapshot of it, or a path from the machine it was trained on
    assert same_model("meta-llama/Llama-3-8B", str(model))
    assert same_model("meta-llama/Llama-3-8B", "/hub/models--meta-llama--Llama-3-8B/snapshots/0123abc")
    assert same_model("/home/alice/Llama-3-8B", str(model))
    assert same_model("gpt2", "openai-community/gpt2")
