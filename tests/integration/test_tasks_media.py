"""Image and audio tasks end to end: dataset columns and file paths, checked against the pipeline run
directly; a file that does not decode fails its row into the error file and nothing else."""

from __future__ import annotations

import difflib
import io
from pathlib import Path

import datasets
import numpy as np
import pytest
import soundfile
import torch
import transformers
from PIL import Image

from hfqueue import Client, JobState
from tests.task_models import audio_dataset, image_dataset, png_bytes, wav_bytes

pytestmark = pytest.mark.timeout(120)


def test_image_classification_over_an_image_column(client: Client, image_classifier: Path, tmp_path: Path) -> None:
    # given a saved dataset with an Image column of 20 different images
    folder = image_dataset(tmp_path / "images", 20)
    images = datasets.load_from_disk(folder)["image"]

    # when an image-classification job runs over it with the top 2 labels
    job = client.submit(task="image-classification", model=str(image_classifier), dataset=str(folder),
                        options={"top_k": 2})
    ds = job.result(timeout=90)

    # then each row's labels and scores equal the pipeline's on that image alone, in order
    pipe = transformers.pipeline("image-classification", model=str(image_classifier))
    assert ds["row_idx"] == list(range(20)) and "image" not in ds.column_names
    for row, image in zip(ds, images, strict=True):
        want = pipe(image.convert("RGB"), top_k=2)
        assert row["labels"] == [w["label"] for w in want] and row["label"] == want[0]["label"]
        np.testing.assert_allclose(row["scores"], [w["score"] for w in want], atol=1e-5)


def test_image_paths_with_a_corrupt_file_fail_only_that_row(client: Client, image_classifier: Path,
                                                             tmp_path: Path) -> None:
    # given image files, one of which is not an image
    paths = []
    for i in range(6):
        path = tmp_path / f"img{i}.png"
        path.write_bytes(png_bytes(i) if i != 2 else b"this is not a png")
        paths.append(str(path))

    # when an image-classification job gets the paths inline
    job = client.submit(task="image-classification", model=str(image_classifier), inputs=paths)
    status = job.wait(timeout=90)

    # then five rows have labels (with the paths echoed), the corrupt one is in the error file
    ds, errors = job.result(), job.errors()
    assert status.state == JobState.COMPLETED_WITH_ERRORS and (status.rows_done, status.rows_failed) == (5, 1)
    assert ds["image"] == [p for i, p in enumerate(paths) if i != 2]
    assert errors["row_idx"] == [2] and errors["error_type"] == ["ValueError"] and "does not decode" in errors["error"][0]
    pipe = transformers.pipeline("image-classification", model=str(image_classifier))
    assert ds["label"] == [pipe(Image.open(p).convert("RGB"), top_k=1)[0]["label"] for p in ds["image"]]


def transcribe_directly(model_dir: Path, wavs: list[bytes], dtype: str = "float32") -> list[str]:
    """The ASR pipeline on each decoded waveform alone, the model in ``dtype``."""
    pipe = transformers.pipeline("automatic-speech-recognition", model=str(model_dir), dtype=getattr(torch, dtype))
    out = []
    for wav in wavs:
        samples, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
        out.append(pipe({"raw": samples, "sampling_rate": rate})["text"].strip())
    return out


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])  # bfloat16: the precision a GPU worker's auto picks
def test_speech_recognition_over_an_audio_column(client: Client, speech_ctc: Path, tmp_path: Path, dtype: str) -> None:
    # given a saved dataset with an Audio column of 12 clips of different lengths
    folder = audio_dataset(tmp_path / "audio", 12)
    wavs = [a["bytes"] for a in datasets.load_from_disk(folder).cast_column("audio", datasets.Audio(decode=False))["audio"]]

    # when an automatic-speech-recognition job runs over it
    job = client.submit(task="asr", model=str(speech_ctc), dataset=str(folder), dtype=dtype)
    ds = job.result(timeout=90)

    # then each transcript equals the pipeline's on that clip alone, in the same precision (in bfloat16, within 2% of
    # its characters: a padded batch rounds otherwise than a clip alone; another clip's transcript shares under 5%)
    assert ds["row_idx"] == list(range(12)) and job.status().dtype == dtype
    want = transcribe_directly(speech_ctc, wavs, dtype)
    if dtype == "float32":
        assert ds["text"] == want
    else:
        similarity = [difflib.SequenceMatcher(None, got, ref).ratio() for got, ref in zip(ds["text"], want, strict=True)]
        assert min(similarity) >= 0.98, similarity
    assert any(ds["text"])


def test_audio_paths_are_resampled_and_a_bad_file_fails_its_row(client: Client, speech_ctc: Path,
                                                                 tmp_path: Path) -> None:
    # given 8 kHz wav files (the model wants 16 kHz) and one file that is not audio
    paths = []
    for i in range(5):
        path = tmp_path / f"clip{i}.wav"
        path.write_bytes(wav_bytes(i, sampling_rate=8000) if i != 1 else b"RIFF....not audio")
        paths.append(str(path))

    # when a speech-recognition job gets the paths inline
    job = client.submit(task="automatic-speech-recognition", model=str(speech_ctc), inputs=paths)
    status = job.wait(timeout=90)

    # then four rows are transcribed, the bad one is in the error file
    errors = job.errors()
    assert status.state == JobState.COMPLETED_WITH_ERRORS and (status.rows_done, status.rows_failed) == (4, 1)
    assert errors["row_idx"] == [1] and "does not decode" in errors["error"][0]
    assert job.result()["audio"] == [p for i, p in enumerate(paths) if i != 1]
