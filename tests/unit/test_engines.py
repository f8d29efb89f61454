"""Exported engines (hfqueue.tasks.engines) on the tiny BERT encoder and classifier: ONNX Runtime against torch,
verification that refuses a broken export, and the artifact cache across processes."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import multiprocessing
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from hfqueue.errors import ModelLoadError
from hfqueue.tasks.engines import TOLERANCES, OrtEncoder, cached_engine, export, probe_batches, verify
from hfqueue.tasks.engines.export import META_FILE, MODEL_FILE, sha256
from tests.tiny_models import build_classifier, build_encoder

pytestmark = pytest.mark.timeout(120)


class Tiny:
    """A tiny model loaded in torch, its folder, tokenizer and exported artifact (fp32 and int8)."""

    def __init__(self, folder: Path, model: Any, tokenizer: Any, artifact: Path) -> None:
        self.folder, self.model, self.tokenizer, self.artifact = folder, model, tokenizer, artifact
        self.output = json.loads((artifact / META_FILE).read_text())["output"]

    def torch_fn(self, **batch: Any) -> torch.Tensor:
        return getattr(self.model(**batch), self.output)

    def engine(self, int8: bool) -> OrtEncoder:
        """An OrtEncoder over the fp32 or the int8 graph of the artifact (the artifact holds both)."""
        folder = self.artifact.parent / f"{self.artifact.name}-{'int8' if int8 else 'fp32'}"
        if not folder.exists():
            folder.mkdir()
            meta = json.loads((self.artifact / META_FILE).read_text())
            for name in meta["files"]:
                os.link(self.artifact / name, folder / name)
            meta["run"] = "model-int8.onnx" if int8 else MODEL_FILE
            (folder / META_FILE).write_text(json.dumps(meta))
        return OrtEncoder(folder, threads=1)


def _tiny(tmp: Path, build: Any, auto: Any) -> Tiny:
    folder = build(tmp / "model")
    model, tokenizer = auto.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        artifact = export(model, tokenizer, tmp / "artifact", int8=True)
    return Tiny(folder, model, tokenizer, artifact)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    return _tiny(tmp_path_factory.mktemp("encoder"), build_encoder, AutoModel)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    return _tiny(tmp_path_factory.mktemp("classifier"), build_classifier, AutoModelForSequenceClassification)


@pytest.fixture(params=["encoder", "classifier"])
def tiny(request: pytest.FixtureRequest) -> Tiny:
    return request.getfixturevalue(request.param)


def test_export_writes_meta_with_the_files_sha256(encoder: Tiny) -> None:
    # given an exported tiny encoder
    meta = json.loads((encoder.artifact / META_FILE).read_text())
    # then meta.json names the exporter, inputs, output and versions, and hashes every file it lists
    assert meta["exporter"].startswith("torch.onnx.export(dynamo=True)")
    assert meta["inputs"][:2] == ["input_ids", "attention_mask"] and meta["output"] == "last_hidden_state"
    assert set(meta["versions"]) == {"torch", "transformers", "onnxruntime"}
    assert meta["files"] == {name: sha256(encoder.artifact / name) for name in ("model.onnx", "model-int8.onnx")}
    assert not [p for p in encoder.artifact.iterdir() if ".tmp-" in p.name]  # no temporary file left behind


def test_onnx_fp32_equals_torch_on_batches_of_varied_lengths(tiny: Tiny) -> None:
    # given probe batches of 1 to 8 rows, padded, one cut at 256 tokens, one without padding
    probes = probe_batches(tiny.tokenizer)
    assert len({tuple(b["input_ids"].shape) for b in probes}) >= 4
    # when torch and ONNX Runtime fp32 both run them
    worst = verify(tiny.torch_fn, tiny.engine(int8=False), probes, TOLERANCES["onnx"], engine="onnx",
                   model=str(tiny.folder))
    # then they agree within the fp32 tolerance, and shapes follow the input
    assert worst >= TOLERANCES["onnx"]
    batch = tiny.tokenizer(["one", "two words", "and then three"], padding=True, return_tensors="pt")
    assert tiny.engine(int8=False)(**batch).shape == tiny.torch_fn(**batch).shape


def test_onnx_int8_stays_within_its_tolerance_on_the_encoder(encoder: Tiny) -> None:
    # given the int8 graph of the tiny encoder
    engine = encoder.engine(int8=True)
    # when verified against torch on the probe batches
    worst = verify(encoder.torch_fn, engine, probe_batches(encoder.tokenizer), TOLERANCES["onnx-int8"],
                   engine="onnx-int8", model=str(encoder.folder))
    # then it is within the int8 tolerance, yet not bit-equal to fp32 (the weights really are quantized)
    assert TOLERANCES["onnx-int8"] <= worst < 1.0


def test_onnx_int8_of_the_wide_classifier_is_refused_by_verification(classifier: Tiny) -> None:
    # given the int8 graph of the tiny classifier, whose weights are wide (initializer_range 1.0): activations
    # large enough that 8-bit weights move its logits by whole units
    engine = classifier.engine(int8=True)
    # when it is verified against torch, then it is refused, naming what was measured
    with pytest.raises(ModelLoadError, match=r"'onnx-int8' for model 'tiny-classifier' differs from torch: min cosine"):
        verify(classifier.torch_fn, engine, probe_batches(classifier.tokenizer), TOLERANCES["onnx-int8"],
               engine="onnx-int8", model="tiny-classifier")
    # while its fp32 graph passes the stricter fp32 tolerance on the same probes
    assert verify(classifier.torch_fn, classifier.engine(int8=False), probe_batches(classifier.tokenizer),
                  TOLERANCES["onnx"]) >= TOLERANCES["onnx"]


def _artifact(folder: Path, onnx_file: Path, like: Path) -> Path:
    """An artifact folder around ``onnx_file`` with ``like``'s meta.json, re-hashed."""
    folder.mkdir()
    os.replace(onnx_file, folder / MODEL_FILE)
    meta = json.loads((like / META_FILE).read_text())
    meta.update(run=MODEL_FILE, files={MODEL_FILE: sha256(folder / MODEL_FILE)})
    (folder / META_FILE).write_text(json.dumps(meta))
    return folder


def test_verify_refuses_a_tampered_graph_naming_the_difference(encoder: Tiny, tmp_path: Path) -> None:
    # given an export whose largest weight matrix was perturbed (a wrong graph that still runs)
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(encoder.artifact / MODEL_FILE))
    weights = [w for w in graph.graph.initializer if len(w.dims) == 2 and w.dims[0] == w.dims[1]]
    for w in weights:
        w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * 3.0, w.name))
    onnx.save(graph, str(tmp_path / "tampered.onnx"))
    engine = OrtEncoder(_artifact(tmp_path / "tampered", tmp_path / "tampered.onnx", encoder.artifact), threads=1)
    # when it is verified, then it is refused with the engine, the model and the measured cosine named
    with pytest.raises(ModelLoadError, match=r"engine 'onnx' for model 'tiny' differs from torch: min cosine 0\.\d+ < "
                                             r"0\.9999 \(max abs difference"):
        verify(encoder.torch_fn, engine, probe_batches(encoder.tokenizer), TOLERANCES["onnx"], engine="onnx",
               model="tiny")


def test_verify_refuses_a_torchscript_export_with_a_baked_sequence_length(encoder: Tiny, tmp_path: Path) -> None:
    # given the TorchScript exporter run without a dynamic sequence axis: the example's length is baked in
    from hfqueue.tasks.engines.export import _body

    example = encoder.tokenizer(["a short one", "and a longer one, with padding"], padding=True, return_tensors="pt")
    names = ["input_ids", "attention_mask"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_body(encoder.model, names, "last_hidden_state"),
                          (example["input_ids"], example["attention_mask"]), str(tmp_path / "fixed.onnx"),
                          input_names=names, output_names=["last_hidden_state"], dynamo=False,
                          dynamic_axes={n: {0: "batch"} for n in names})
    engine = OrtEncoder(_artifact(tmp_path / "fixed", tmp_path / "fixed.onnx", encoder.artifact), threads=1)
    # when verified on probes of other lengths, then it is refused, naming the batch it failed on
    with pytest.raises(ModelLoadError, match=r"engine 'onnx' for model 'tiny' fails on a probe batch of shape"):
        verify(encoder.torch_fn, engine, probe_batches(encoder.tokenizer), TOLERANCES["onnx"], engine="onnx",
               model="tiny")
    assert encoder.model.training is False  # the export left the torch model as it was: eval


def _fake_build(folder: Path, marker: str) -> None:
    """Write a small valid artifact slowly, counting builds in ``marker`` (one line per build)."""
    with open(marker, "a") as fh:
        fh.write(f"{os.getpid()}\n")
    time.sleep(1.0)  # long enough for the other process to arrive while this one builds
    (folder / MODEL_FILE).write_bytes(b"not really onnx, but hashed like it")
    meta = {"format": 1, "engine": "onnx", "run": MODEL_FILE, "files": {MODEL_FILE: sha256(folder / MODEL_FILE)},
            "inputs": ["input_ids", "attention_mask"], "output": "last_hidden_state"}
    (folder / META_FILE).write_text(json.dumps(meta))


def _child(cache_root: str, model_dir: str, marker: str, start_at: float) -> None:
    import functools

    time.sleep(max(0.0, start_at - time.time()))
    cached_engine(Path(cache_root), model_dir, None, "onnx", functools.partial(_fake_build, marker=marker))


def test_two_processes_starting_together_build_the_artifact_once(tmp_path: Path) -> None:
    # given two spawned processes that ask for the same engine artifact at the same instant
    model_dir = build_encoder(tmp_path / "model")
    marker, ctx = tmp_path / "builds.txt", multiprocessing.get_context("spawn")
    start_at = time.time() + 6.0  # after both have imported torch
    procs = [ctx.Process(target=_child, args=(str(tmp_path / "cache"), str(model_dir), str(marker), start_at))
             for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(90)
    # then both succeed, one built it, and the folder holds one complete artifact and no leftovers
    assert [p.exitcode for p in procs] == [0, 0]
    assert len(marker.read_text().split()) == 1
    (artifact,) = (tmp_path / "cache").glob("*/*/onnx")
    assert artifact.parent.name.startswith("local-") and sorted(p.name for p in artifact.iterdir()) == [
        META_FILE, MODEL_FILE]
    assert not list(artifact.parent.glob(".onnx.tmp-*"))


def test_a_truncated_cached_artifact_is_rebuilt(encoder: Tiny, tmp_path: Path) -> None:
    # given an engine artifact built once through the cache
    builds: list[Path] = []

    def build(folder: Path) -> None:
        builds.append(folder)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export(encoder.model, encoder.tokenizer, folder, int8=False)

    first = cached_engine(tmp_path, str(encoder.folder), None, "onnx", build)
    assert cached_engine(tmp_path, str(encoder.folder), None, "onnx", build) == first and len(builds) == 1
    # when its .onnx file is truncated
    data = (first / MODEL_FILE).read_bytes()
    (first / MODEL_FILE).write_bytes(data[: len(data) // 2])
    # then the next call rebuilds it, and the rebuilt artifact runs and matches torch
    again = cached_engine(tmp_path, str(encoder.folder), None, "onnx", build)
    assert again == first and len(builds) == 2
    verify(encoder.torch_fn, OrtEncoder(again, threads=1), probe_batches(encoder.tokenizer), TOLERANCES["onnx"])


def test_a_hub_model_needs_its_revision_and_torch_has_no_artifact(tmp_path: Path) -> None:
    # given a Hub id without a resolved revision, or the torch engine
    # when a cached artifact is asked for, then it is refused before anything is built
    with pytest.raises(ValueError, match="resolved revision"):
        cached_engine(tmp_path, "org/model", None, "onnx", lambda folder: None)
    with pytest.raises(ValueError, match="no artifact"):
        cached_engine(tmp_path, "org/model", "abc123", "torch", lambda folder: None)
