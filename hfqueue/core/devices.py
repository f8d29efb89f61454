"""What a process's devices hold, measured where it runs: read by the worker's heartbeat and its metrics."""

from __future__ import annotations

from typing import Any


def gpu_memory() -> list[dict[str, Any]]:
    """Allocated, reserved and total bytes of each CUDA device, once this process has used CUDA (else [])."""
    import torch

    if not torch.cuda.is_initialized():  # reading memory must not be what first touches CUDA
        return []
    return [{"device": f"cuda:{i}", "allocated": torch.cuda.memory_allocated(i),
             "reserved": torch.cuda.memory_reserved(i), "total": torch.cuda.get_device_properties(i).total_memory}
            for i in range(torch.cuda.device_count())]
