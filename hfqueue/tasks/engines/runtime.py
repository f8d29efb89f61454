"""Running an exported artifact: an ONNX Runtime session behind the call signature of the torch body."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hfqueue.errors import ModelLoadError
from hfqueue.tasks.engines.export import read_meta


def physical_cores() -> int:
    """Physical cores this process may run on: hyperthread siblings share one core's matmul units, so ORT's
    intra-op threads beyond this only contend. Falls back to the usable logical CPUs where /proc says nothing."""
    usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    cores: set[tuple[str, str]] = set()
    try:
        block: dict[str, str] = {}
        for line in [*Path("/proc/cpuinfo").read_text().splitlines(), ""]:
            if line.strip():
                key, _, value = line.partition(":")
                block[key.strip()] = value.strip()
                continue
            if block.get("processor", "").isdigit() and int(block["processor"]) in usable and "core id" in block:
                cores.add((block.get("physical id", "0"), block["core id"]))
            block = {}
    except OSError:
        pass
    return max(1, len(cores) or len(usable))


class OrtEncoder:
    """The exported body of a cached artifact, called like the torch body's forward.

    ``OrtEncoder(folder)(input_ids, attention_mask, token_type_ids)`` returns ``last_hidden_state`` (batch,
    sequence, hidden) or ``logits`` ((batch, labels), or (batch, sequence, labels) per token), as meta.json's
    ``output`` says, as a float32 torch tensor
    on the device of ``input_ids``. ``token_type_ids`` left None is all zeros, as in transformers.
    """

    def __init__(self, folder: Path, *, threads: int | None = None) -> None:
        import onnxruntime

        self.folder = Path(folder)
        self.meta = read_meta(self.folder)
        self.inputs: list[str] = list(self.meta["inputs"])
        self.output: str = self.meta["output"]
        self.engine: str = self.meta["engine"]
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or physical_cores()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = onnxruntime.InferenceSession(str(self.folder / self.meta["run"]), options,
                                                        providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise ModelLoadError(f"ONNX Runtime cannot load {self.folder / self.meta['run']}: {exc}",
                                 value=str(self.folder)) from exc

    def __call__(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
        import numpy as np
        import torch

        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        if given["token_type_ids"] is None:
            given["token_type_ids"] = torch.zeros_like(input_ids)
        feed = {name: np.ascontiguousarray(given[name].detach().cpu().numpy(), dtype=np.int64) for name in self.inputs}
        (out,) = self.session.run([self.output], feed)
        return torch.from_numpy(out).to(input_ids.device)

    def __repr__(self) -> str:
        return f"OrtEncoder({str(self.folder)!r}, engine={self.engine!r}, output={self.output!r})"
