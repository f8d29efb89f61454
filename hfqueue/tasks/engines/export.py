"""Export an encoder body to ONNX with the torch.export-based exporter, optionally with an int8 copy.

Why ``torch.onnx.export(..., dynamo=True)`` and not the TorchScript exporter (``dynamo=False``): torch.export
traces with symbolic batch and sequence sizes and *fails* when model code would pin one (a guard on a shape),
where the TorchScript tracer silently records whatever the example input took. The TorchScript exporter also
leaves the model in training mode when it is wrapped in a module left in training mode (``nn.Module`` is on
creation): it exports in eval, then restores the wrapper's mode recursively, so the torch model it was given
computes with dropout afterwards. A torch reference taken after such an export is what differs, not the graph.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from hfqueue.errors import ModelLoadError
from hfqueue.files import atomic_path, atomic_text

MODEL_FILE = "model.onnx"
INT8_FILE = "model-int8.onnx"
META_FILE = "meta.json"
META_FORMAT = 1
OPSET = 20
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# The int8 recipe: every MatMul with a constant weight becomes MatMulNBits with 8-bit weights in blocks of 32 along
# the input dimension, one scale per block, and (accuracy_level 4) int8 activations quantized per block too.
# Per-block scales are what keeps BERT-family accuracy: their hidden states carry a few outlier channels, and
# quantize_dynamic's one activation scale per tensor lets those flatten the rest (all-MiniLM-L6-v2, 2,000
# sentences: min cosine 0.973 and neighbours@10 0.90 for per-channel dynamic int8, against 0.998 and 0.98 here).
INT8_RECIPE: dict[str, Any] = {"method": "onnxruntime MatMulNBitsQuantizer", "bits": 8, "block_size": 32,
                               "is_symmetric": True, "accuracy_level": 4}
_EXAMPLE = ["A short one.", "A somewhat longer example sentence, so that the batch has padding in it."]


def sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (artifacts run to hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _input_names(model: Any, tokenizer: Any) -> list[str]:
    """The inputs the body takes: input_ids and attention_mask always, token_type_ids when the tokenizer
    produces them and the model's forward accepts them (BERT does; DistilBERT, RoBERTa-style with one type don't)."""
    import inspect

    accepted = inspect.signature(model.forward).parameters
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in getattr(tokenizer, "model_input_names", ()) and "token_type_ids" in accepted:
        names.append("token_type_ids")
    return names


def _body(model: Any, names: list[str], output: str) -> Any:
    """A module taking the inputs positionally (the exporter's calling convention) and returning one tensor."""
    import torch

    class Body(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
            inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
            return getattr(self.model(**{n: inputs[n] for n in names}), output)

    return Body().eval()  # eval: an exporter that restores the wrapper's mode must restore eval, not train


def export(model: Any, tokenizer: Any, folder: Path, *, int8: bool) -> Path:
    """Export ``model``'s body to ``folder/model.onnx`` (and ``model-int8.onnx`` with ``int8``) plus ``meta.json``.

    The graph takes ``input_ids``, ``attention_mask`` (and ``token_type_ids`` when the model uses them), int64,
    shape (batch, sequence), both dimensions dynamic; it returns ``logits`` for a model with a classification
    head ((batch, labels) per sequence, (batch, sequence, labels) per token), else ``last_hidden_state``. Each file is written under a temporary name and
    renamed; ``meta.json`` (exporter, versions, inputs, output, sha256 of each file) is written last, so a
    folder with a valid meta.json is complete. Returns ``folder``. The model is left in the mode it was in.
    """
    import onnxruntime
    import torch
    import transformers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = _input_names(model, tokenizer)
    example = tokenizer(_EXAMPLE, padding=True, return_tensors="pt")
    args = tuple(example[n] if n in example else torch.zeros_like(example["input_ids"]) for n in names)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            probe = model(**dict(zip(names, args, strict=True)))
        output = "logits" if getattr(probe, "logits", None) is not None else "last_hidden_state"
        batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
        # Named dims, not Dim.AUTO: export fails loudly if the model code would specialize either size.
        shapes = tuple({0: batch, 1: sequence} for _ in names)
        started = time.perf_counter()
        try:
            program = torch.onnx.export(_body(model, names, output), args, input_names=names, output_names=[output],
                                        dynamic_shapes=shapes, dynamo=True, optimize=True, opset_version=OPSET,
                                        external_data=False, verbose=False)
        except Exception as exc:  # torch.export raises many kinds: unsupported op, guard on a dynamic size, ...
            raise ModelLoadError(f"cannot export {type(model).__name__} to ONNX: {exc}", value=type(model).__name__) \
                from exc
        if program is None:  # only None when given a file to write; never here, where the program is asked for
            raise ModelLoadError(f"exporting {type(model).__name__} gave no ONNX program", value=type(model).__name__)
        with atomic_path(folder / MODEL_FILE) as tmp:
            program.save(str(tmp), external_data=False)
        seconds = time.perf_counter() - started
    finally:
        model.train(was_training)
    files = {MODEL_FILE: sha256(folder / MODEL_FILE)}
    if int8:
        quantize_int8(folder / MODEL_FILE, folder / INT8_FILE)
        files[INT8_FILE] = sha256(folder / INT8_FILE)
    meta = {"format": META_FORMAT, "engine": "onnx-int8" if int8 else "onnx", "run": INT8_FILE if int8 else MODEL_FILE,
            "files": files, "inputs": names, "output": output, "opset": OPSET,
            "exporter": "torch.onnx.export(dynamo=True) (torch.export)", "export_seconds": round(seconds, 2),
            "int8": INT8_RECIPE if int8 else None, "model_class": type(model).__name__,
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "onnxruntime": onnxruntime.__version__}}
    atomic_text(folder / META_FILE, json.dumps(meta, indent=2))
    return folder


def quantize_int8(source: Path, target: Path) -> Path:
    """Write the int8 copy of ``source`` (``INT8_RECIPE``) to ``target``, under a temporary name then renamed."""
    import logging

    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    # The quantizer logs a line per node at INFO on its own handler; a worker's log wants none of them.
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    quantizer = MatMulNBitsQuantizer(onnx.load(str(source)), bits=INT8_RECIPE["bits"],
                                     block_size=INT8_RECIPE["block_size"], is_symmetric=INT8_RECIPE["is_symmetric"],
                                     accuracy_level=INT8_RECIPE["accuracy_level"])
    quantizer.process()
    with atomic_path(target) as tmp:
        quantizer.model.save_model_to_file(str(tmp), False)
    return target


def read_meta(folder: Path) -> dict[str, Any]:
    """The parsed ``meta.json`` of an artifact folder; ModelLoadError if missing or unreadable."""
    try:
        meta = json.loads((Path(folder) / META_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"engine artifact {folder} has no readable {META_FILE}: {exc}", value=str(folder)) \
            from exc
    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
        raise ModelLoadError(f"engine artifact {folder}: {META_FILE} is not format {META_FORMAT}", value=str(folder))
    return meta
