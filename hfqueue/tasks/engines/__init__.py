"""Exported inference engines for encoder models: the transformer body run by ONNX Runtime instead of torch.

An engine replaces only the body's forward (token ids in; ``last_hidden_state``, or ``logits`` for a
sequence-classification head, out). Tokenizing, batching, pooling and the task's output shaping stay the
task's, so an engine is a drop-in for ``loaded.model(**batch)``:

* ``torch``: the module as loaded (no engine).
* ``onnx``: the body exported by the torch.export-based exporter, run by ONNX Runtime in fp32.
* ``onnx-int8``: the same graph with its weight matrices quantized to 8 bits in blocks of 32 (MatMulNBits:
  the only recipe measured within 0.99 cosine of float32 on all-MiniLM-L6-v2; per-tensor dynamic int8 was twice
  as fast and 0.97); about two thirds the size, not faster than ``onnx`` on this project's CPU; refused at load
  when it drifts too far.

Names say the runtime, then the precision (as sentence-transformers' ``backend="onnx"`` and its
``*_qint8_*.onnx`` files do), so a future ``openvino`` or ``onnx-fp16`` reads alike.

Artifacts are built once per (model, revision, engine) by :func:`cached_engine` and checked against
torch with :func:`verify` before use. onnxruntime, onnx and onnxscript are optional (``hfqueue[onnx]``);
they are imported inside the functions that need them.
"""

from __future__ import annotations

from hfqueue.tasks.engines.cache import artifact_problem, cached_engine, folder_key, safe_model_id
from hfqueue.tasks.engines.export import export
from hfqueue.tasks.engines.runtime import OrtEncoder, physical_cores
from hfqueue.tasks.engines.verify import TOLERANCES, probe_batches, verify

ENGINES: tuple[str, ...] = ("torch", "onnx", "onnx-int8")

__all__ = ["ENGINES", "TOLERANCES", "OrtEncoder", "artifact_problem", "cached_engine", "export", "folder_key",
           "physical_cores", "probe_batches", "safe_model_id", "verify"]
