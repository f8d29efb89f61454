"""Putting an engine under a loaded model: build or reuse its artifact, check it against torch, keep it beside it.

A task's forward then asks :func:`engine_of` and calls the engine where it would call the torch body.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hfqueue.errors import ModelLoadError
from hfqueue.tasks.base import LoadedModel
from hfqueue.tasks.engines.cache import cached_engine
from hfqueue.tasks.engines.export import export
from hfqueue.tasks.engines.runtime import OrtEncoder
from hfqueue.tasks.engines.verify import TOLERANCES, probe_batches, verify


def attach(loaded: LoadedModel, *, engine: str, cache_root: Path, model_id: str) -> OrtEncoder:
    """Build (once per host, cached) or reuse ``engine``'s artifact of ``loaded.model``, verify it on probe batches
    against the torch model it came from, and keep it in ``loaded.extra["engine"]``.

    Raises :class:`ModelLoadError` naming engine, model and the reason: a device other than the CPU, weights
    not in float32, an export that fails, or outputs beyond the engine's tolerance.
    """
    import torch

    try:
        import onnxruntime  # noqa: F401 - the optional extra
        import onnxscript  # noqa: F401 - torch.onnx's exporter needs it
    except ImportError as exc:
        raise ModelLoadError(f"engine {engine!r} needs hfqueue[onnx] on this worker ({exc}): install it, or submit "
                             "with engine torch", value=engine) from None
    if not loaded.device.startswith("cpu") or len(loaded.devices) > 1:
        raise ModelLoadError(f"engine {engine!r} runs on the CPU (onnxruntime's CPU provider); this worker runs "
                             f"{model_id!r} on {loaded.device}: use engine torch here", value=engine)
    if loaded.dtype not in ("float32", ""):
        raise ModelLoadError(f"engine {engine!r} is exported from float32 weights; the job runs {loaded.dtype}: "
                             "submit it with dtype auto or float32", value=engine)
    net, tokenizer = loaded.model, loaded.tokenizer
    folder = cached_engine(cache_root, model_id, loaded.revision, engine,
                           lambda into: export(net, tokenizer, into, int8=engine == "onnx-int8"))
    encoder = OrtEncoder(folder)

    def body(**batch: Any) -> Any:
        with torch.inference_mode():
            out = net(**{k: v for k, v in batch.items() if k in encoder.inputs})
        return out.logits if encoder.output == "logits" else out.last_hidden_state

    verify(body, lambda **batch: encoder(**{k: batch.get(k) for k in ("input_ids", "attention_mask",
                                                                     "token_type_ids")}),
           probe_batches(tokenizer, max_length=min(loaded.max_tokens or 256, 256)), TOLERANCES[engine],
           engine=engine, model=model_id)
    loaded.extra["engine"] = encoder
    return encoder


def engine_of(loaded: LoadedModel) -> OrtEncoder | None:
    """The engine a loaded model runs its body on, or None for torch."""
    return loaded.extra.get("engine")


def run_body(loaded: LoadedModel, batch: dict[str, Any]) -> Any:
    """The body's output for ``batch`` (``last_hidden_state`` or ``logits``): through the engine when one is
    attached, else through torch."""
    encoder = engine_of(loaded)
    if encoder is not None:
        return encoder(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
    out = loaded.model(**batch)
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state
