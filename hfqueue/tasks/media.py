"""Decoding image and audio rows, one at a time, so a file that does not decode fails its row only.

Rows come as a path (inline inputs or a string column), as ``{"bytes", "path"}`` (a ``datasets``
Image/Audio column, which the worker reads undecoded), or already decoded (a PIL image, or
``{"array", "sampling_rate"}``). Audio is mixed down to mono and resampled to the model's rate.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any


def media_problem(row: Any, kind: str) -> str | None:
    """What is wrong with one inline image/audio row, or None: inline rows are file paths."""
    if not isinstance(row, str):
        return f"inline {kind} rows are file paths, got {type(row).__name__}"
    if not Path(row).expanduser().is_file():
        return f"{kind} file {row!r} does not exist"
    return None


def _source(value: Any) -> Any:
    """A path or a file-like object for ``value``."""
    if isinstance(value, str):
        return str(Path(value).expanduser())
    if isinstance(value, dict) and (value.get("bytes") is not None or value.get("path")):
        return io.BytesIO(value["bytes"]) if value.get("bytes") is not None else value["path"]
    raise ValueError(f"cannot read a {type(value).__name__} as media; give a path or {{'bytes', 'path'}}")


def decode_image(value: Any) -> Any:
    """An RGB ``PIL.Image`` from a path, ``{"bytes", "path"}`` or an image; ValueError if it does not decode."""
    from PIL import Image

    if isinstance(value, Image.Image):
        return value.convert("RGB")
    try:
        with Image.open(_source(value)) as image:
            return image.convert("RGB")  # convert() reads the whole file, so corrupt data fails here
    except (OSError, SyntaxError) as exc:  # PIL raises these for unreadable or truncated files
        raise ValueError(f"image does not decode: {exc}") from None


def decode_audio(value: Any, sampling_rate: int) -> Any:
    """Mono float32 samples at ``sampling_rate``; ValueError if the audio does not decode."""
    import numpy as np
    import soundfile
    import soxr

    if isinstance(value, dict) and value.get("array") is not None:
        samples, rate = np.asarray(value["array"], dtype=np.float32), int(value["sampling_rate"])
    else:
        try:
            samples, rate = soundfile.read(_source(value), dtype="float32", always_2d=True)
        except (soundfile.LibsndfileError, RuntimeError, OSError) as exc:
            raise ValueError(f"audio does not decode: {exc}") from None
    if samples.ndim == 2:
        samples = samples.mean(axis=1)
    if samples.size == 0:
        raise ValueError("audio is empty")
    if rate != sampling_rate:
        samples = soxr.resample(samples, rate, sampling_rate)
    return samples.astype(np.float32, copy=False)
