"""The precision policy: what dtype="auto" and an explicit dtype mean on each device, and what counts as NaN/inf."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from hfqueue.tasks import precision
from hfqueue.tasks.precision import non_finite, resolve_dtype

pytestmark = pytest.mark.timeout(30)


def test_auto_is_exact_on_a_cpu_and_an_explicit_dtype_is_kept() -> None:
    # given the dtypes a job may ask for
    # when they are resolved for a CPU
    resolved = {asked: resolve_dtype(asked, "cpu") for asked in ("auto", "float32", "float16", "bfloat16")}
    # then auto means float32 and the others are kept
    assert resolved == {"auto": "float32", "float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a CUDA device decides between bfloat16 and float16")
def test_auto_is_a_half_precision_on_cuda() -> None:
    # given a CUDA device; when auto is resolved; then it is bfloat16 where the GPU has it, else float16
    expected = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    assert resolve_dtype("auto", "cuda:0") == expected


def test_bfloat16_on_a_cpu_without_native_support_warns_once(monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    # given a CPU that reports no native bfloat16 (avx512_bf16 / AMX), as older x86 ones do
    monkeypatch.setattr(precision, "native_bf16_cpu", lambda: False)
    monkeypatch.setattr(precision, "_warned", set())
    # when two chunks ask for bfloat16
    with caplog.at_level(logging.WARNING, logger="hfqueue.tasks.precision"):
        first, second = resolve_dtype("bfloat16", "cpu"), resolve_dtype("bfloat16", "cpu")
    # then it runs as asked, with one warning saying it will be slower
    assert (first, second) == ("bfloat16", "bfloat16")
    assert [r.getMessage() for r in caplog.records if "slower than float32" in r.getMessage()] != []
    assert len(caplog.records) == 1


def test_native_bfloat16_is_read_from_the_cpu_flags() -> None:
    # given this machine's CPU flags; when asked; then the answer agrees with /proc/cpuinfo
    with open("/proc/cpuinfo") as info:
        flags = info.read()
    assert precision.native_bf16_cpu() == ("avx512_bf16" in flags or "amx_bf16" in flags)


@pytest.mark.parametrize(("output", "bad"), [
    ({"embedding": [0.1, 0.2]}, False),
    ({"embedding": [0.1, float("nan")]}, True),
    ({"scores": np.array([1.0, np.inf], dtype=np.float32)}, True),
    ({"logits": torch.tensor([[1.0, -2.0]], dtype=torch.bfloat16)}, False),
    ({"logits": torch.tensor([float("nan")], dtype=torch.float16)}, True),
    ({"label": "POSITIVE", "score": 0.9, "entities": [{"score": float("-inf")}]}, True),
    ({"label": "NEGATIVE", "ids": np.array([1, 2])}, False),
])
def test_non_finite_finds_nan_and_inf_wherever_an_output_holds_numbers(output: dict, bad: bool) -> None:
    # given a task output; when checked; then NaN or inf anywhere in it is found, and nothing else
    assert non_finite(output) is bad
