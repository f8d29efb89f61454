"""Which GPUs `hfq worker --gpus all` takes, and how each worker's GPU index is read (no GPU needed: the supervisor
only lists GPUs and sets environments; tests/integration/test_scale_out.py runs its workers)."""

from __future__ import annotations

import pytest

from hfqueue.cli.supervisor import Supervisor, parse_gpus
from hfqueue.core.config import Settings
from hfqueue.errors import ConfigError

pytestmark = pytest.mark.timeout(10)


def test_all_keeps_to_the_gpus_cuda_visible_devices_leaves_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    # given a process confined to two GPUs (as Slurm confines a job), with nvidia-smi listing every GPU of the host
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,GPU-5f2c,-1,3")
    monkeypatch.setenv("PATH", "/nonexistent")  # nvidia-smi is not asked
    # when `--gpus all` is read, then it is those two: CUDA reads the list up to its first entry that is no GPU
    assert parse_gpus("all") == ["2", "GPU-5f2c"]


@pytest.mark.parametrize("hidden", ["", "-1", "none"])
def test_all_with_every_gpu_hidden_is_refused_naming_the_variable(monkeypatch: pytest.MonkeyPatch,
                                                                   hidden: str) -> None:
    # given CUDA_VISIBLE_DEVICES that leaves no GPU
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
    # then `--gpus all` is refused, saying so and what to do
    with pytest.raises(ConfigError, match="CUDA_VISIBLE_DEVICES=.* leaves this process no GPU; unset it"):
        parse_gpus("all")


def test_each_worker_reads_its_gpu_index_as_nvidia_smi_numbers_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # given no device order set
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    # when the supervisor plans one worker per GPU
    slots = Supervisor(Settings(), ["0", "1"], name="box").slots
    # then each worker sees only its GPU, numbered in PCI bus order (nvidia-smi's), not CUDA's fastest-first
    assert [(s.env["CUDA_VISIBLE_DEVICES"], s.env["CUDA_DEVICE_ORDER"]) for s in slots] == [
        ("0", "PCI_BUS_ID"), ("1", "PCI_BUS_ID")]


def test_a_device_order_the_operator_set_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "FASTEST_FIRST")
    slots = Supervisor(Settings(), ["0"], name="box").slots
    assert slots[0].env["CUDA_DEVICE_ORDER"] == "FASTEST_FIRST"
