"""The precision policy: which dtype a model runs in, and the check that a reduced-precision batch came out finite.

``dtype="auto"`` (the default of jobs and of ``HFQ_DTYPE``) means:

- on CUDA, bfloat16 where the GPU supports it (Ampere and later), else float16, for every task: tensor cores,
  half the memory, and outputs within about 1e-4 cosine of float32 for encoders;
- on CPU, float32: exact, and the only precision every CPU runs at full speed. A job (or ``HFQ_DTYPE``) may ask
  for bfloat16, which is 1.7-1.9x faster on CPUs with native bfloat16 (avx512_bf16 or AMX) and slower on the
  rest, which get a warning.

Reduced precision can overflow where float32 does not (a large activation becomes inf, then NaN): a batch
whose outputs hold NaN or inf is run again in float32 (:mod:`hfqueue.worker.runner`), logged and counted.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger(__name__)

REDUCED = frozenset({"float16", "bfloat16"})
_warned: set[str] = set()


def resolve_dtype(requested: str, device: str) -> str:
    """The dtype a model asked to run in ``requested`` runs in on ``device`` (``cpu``, ``cuda``, ``cuda:1``, ...)."""
    if requested == "auto":
        if device.startswith("cuda"):
            import torch

            return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        return "float32"
    if requested == "bfloat16" and device.startswith("cpu") and not native_bf16_cpu() and device not in _warned:
        _warned.add(device)  # once per process: every chunk asks again
        logger.warning("bfloat16 was asked for on a CPU without native bfloat16 (no avx512_bf16 or AMX): it runs "
                       "emulated, slower than float32; use dtype float32 or auto on this worker")
    return requested


@functools.cache
def native_bf16_cpu() -> bool:
    """Whether this CPU computes in bfloat16 natively (the avx512_bf16 or amx_bf16 flag; Linux's /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as info:
            flags = next((line.split(":", 1)[1].split() for line in info if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def non_finite(value: Any) -> bool:
    """Whether an output (a number, a list, a NumPy array or tensor, a dict of those) holds NaN or inf."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, Mapping):
        return any(non_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(non_finite(v) for v in value)
    if hasattr(value, "dtype") and hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        import numpy as np

        array = value.detach().float().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        return array.dtype.kind in "fc" and not bool(np.isfinite(array).all())
    return False
