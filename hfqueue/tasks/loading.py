"""Loading a model for a task: read its config, check that it fits the task, load weights the way asked.

The same fit check runs twice: at submit time on ``config.json`` (read from a local folder, or fetched
from the Hub when reachable), so a mismatch fails before anything is enqueued, and again on the worker
before weights load, so a job the producer could not check still fails with the same clear message.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hfqueue.errors import ModelLoadError

logger = logging.getLogger(__name__)


def read_config(model: str, revision: str | None) -> dict[str, Any] | None:
    """The model's ``config.json`` as a dict; None when it cannot be had (offline, no access, no file)."""
    config = read_json(model, revision, "config.json")
    return config if isinstance(config, dict) else None


def read_json(model: str, revision: str | None, filename: str) -> Any:
    """A JSON file of the model (``filename`` relative to its folder or repo); None when it cannot be had."""
    filename = filename.lstrip("/")
    path = Path(model).expanduser()
    if path.is_dir():
        file = path / filename
        return json.loads(file.read_text()) if file.is_file() else None
    try:
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(model, filename, revision=revision)).read_text())
    except Exception as exc:  # noqa: BLE001 - offline, gated, missing: the worker checks again when it loads
        logger.debug("%s of %s not read at submit: %s", filename, model, exc)
        return None


def head_problem(task: str, model_class: str, heads: tuple[str, ...], config: dict[str, Any]) -> str | None:
    """Why a model with this config cannot run ``task``, or None when it fits.

    ``heads`` names ``transformers`` auto mappings (e.g. ``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES``); the
    model fits when one of its ``architectures`` is a class those mappings list, or, for a config
    without ``architectures``, when its ``model_type`` has such a class.
    """
    if not heads:
        return None
    from transformers.models.auto import modeling_auto

    classes: set[str] = set()
    model_types: set[str] = set()
    for mapping_name in heads:
        mapping = getattr(modeling_auto, mapping_name)
        model_types.update(mapping)
        for value in mapping.values():
            classes.update([value] if isinstance(value, str) else value)
    architectures = config.get("architectures") or []
    if architectures:
        if any(a in classes for a in architectures):
            return None
        return (f"it is a {architectures[0]}, and {task} needs a model with an {model_class} head "
                f"(an architecture such as {_example(heads, config.get('model_type'))})")
    model_type = config.get("model_type")
    if model_type is None or model_type in model_types:
        return None
    return f"its model type {model_type!r} has no {model_class} head, which {task} needs"


_FAMILIAR = ("bert", "distilbert", "roberta", "bart", "t5", "gpt2", "llama", "vit", "wav2vec2", "whisper")


def _example(heads: tuple[str, ...], model_type: str | None) -> str:
    """A class the task accepts: of the model's own family when it has one, else of a familiar family."""
    from transformers.models.auto import modeling_auto

    mapping = getattr(modeling_auto, heads[0])
    family = next((t for t in (model_type, *_FAMILIAR) if t in mapping), next(iter(mapping)))
    example = mapping[family]
    return example if isinstance(example, str) else example[0]


def load_weights(model_class: str, model: str, *, config: Any, revision: str | None, device: str, dtype: str,
                 quantization: str | None, trust_remote_code: bool, device_map: str | None = None,
                 max_memory: dict[str, str] | None = None) -> Any:
    """Load ``transformers.<model_class>`` weights on ``device``, in eval mode, with the ``config`` already read.

    ``quantization`` ("8bit"/"4bit") goes through bitsandbytes and needs a CUDA device and the
    package; anything else raises :class:`ModelLoadError` saying which is missing. ``device_map="auto"``
    lets accelerate spread the weights over the GPUs and CPU memory it sees, each device holding at most
    its ``max_memory`` entry (keys: GPU indexes as strings, or "cpu").
    """
    import torch
    import transformers

    kwargs: dict[str, Any] = {"config": config, "revision": revision, "trust_remote_code": trust_remote_code,
                              "dtype": "auto" if dtype == "auto" else getattr(torch, dtype)}
    if device_map:
        kwargs["device_map"] = device_map
        if max_memory:
            kwargs["max_memory"] = {int(k) if k.isdigit() else k: v for k, v in max_memory.items()}
    if quantization:
        kwargs.update(quantization_config=_bnb_config(quantization, device), device_map=device_map or device)
    net = getattr(transformers, model_class).from_pretrained(model, **kwargs)
    if not quantization and not device_map:  # otherwise placed by device_map, and not to be moved
        net.to(device)
    return net.eval()


def placement(net: Any) -> list[str]:
    """The devices a loaded model's weights lie on: GPUs first (``cuda:0``, ``cuda:1``, ...), then ``cpu``, ``disk``."""
    device_map = getattr(net, "hf_device_map", None)  # set by accelerate when it spread the model over devices
    if not device_map:
        return [str(net.device)]
    names = {f"cuda:{d}" if isinstance(d, int) else str(d) for d in device_map.values()}
    return sorted(names, key=lambda n: (not n.startswith("cuda"), len(n), n))


def input_device(net: Any) -> str:
    """Where a model spread by a device map takes its inputs: the device of its first layer (the embeddings)."""
    try:
        weight = getattr(net.get_input_embeddings(), "weight", None)
    except (NotImplementedError, AttributeError):  # models without token embeddings (speech, vision)
        weight = None
    if weight is not None and weight.device.type != "meta":
        return str(weight.device)
    if net.device.type != "meta":
        return str(net.device)
    # Offloaded weights wait on the meta device; accelerate runs them on its main device: the first GPU, else CPU.
    gpus = [d for d in placement(net) if d.startswith("cuda")]
    return gpus[0] if gpus else "cpu"


def _bnb_config(quantization: str, device: str) -> Any:
    if not device.startswith("cuda"):
        raise ModelLoadError(f"quantization {quantization!r} needs a CUDA worker; this worker runs on {device}. "
                             "Submit without quantization, or send the job to a GPU worker's queue",
                             value=quantization)
    try:
        import bitsandbytes  # noqa: F401 - only checking that it is installed
    except ImportError:
        raise ModelLoadError(f"quantization {quantization!r} needs the bitsandbytes package on the worker "
                             "(pip install bitsandbytes)", value=quantization) from None
    import torch
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16)


def resolved_revision(model: str, net: Any, asked: str | None) -> str | None:
    """The commit a Hub model was loaded from (for the manifest); None for a local folder."""
    if Path(model).expanduser().exists():
        return None
    return getattr(net.config, "_commit_hash", None) or asked
