"""``make gpu-check`` where no GPU is: it says what it skipped and exits 0, and its CPU-runnable parts (job plumbing,
answer checks, report writing, the benchmark's code) run for real with a CPU worker in the GPU worker's place."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
sys.path.insert(0, str(ROOT / "benchmarks"))

pytestmark = pytest.mark.timeout(300)


def test_without_a_gpu_it_says_what_it_skipped_and_exits_0(tmp_path: Path) -> None:
    # given a host where nvidia-smi does not exist
    env = {**os.environ, "PATH": str(tmp_path)}
    # when the check runs
    done = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    # then it exits 0 and names every path it skipped
    import gpu_check

    assert done.returncode == 0, done.stderr
    assert all(f"SKIP  {path}: needs an NVIDIA GPU" in done.stdout for path in gpu_check.PATHS)


def test_the_check_names_every_path_it_prints_when_skipping() -> None:
    import gpu_check
    import gpu_paths

    assert [name for name, _ in gpu_paths.CHECKS] + ["benchmark"] == list(gpu_check.PATHS)


def test_on_a_cpu_worker_the_plumbing_answers_and_report_are_real(tmp_path: Path) -> None:
    # given no GPU: the check's --cpu mode, a CPU worker in the GPU worker's place
    env = {k: v for k, v in os.environ.items() if not k.startswith("HFQ_") and k not in ("COLUMNS", "LINES")}
    done = subprocess.run([sys.executable, str(SCRIPT), "--cpu", "--out", str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # then the paths that run on a CPU (float16 and bfloat16 too) passed against the CPU float32 reference, the
    # others were skipped with a reason
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    status = {v["path"]: v["status"] for v in report["verdicts"]}
    runs_on_a_cpu = [f"{task} {dtype}" for task in ("embeddings", "text-classification", "generation")
                     for dtype in ("float16", "bfloat16")] + ["prefetch (float32)", "LoRA adapter", "hfq workers devices"]
    assert {path: status.pop(path) for path in runs_on_a_cpu} == dict.fromkeys(runs_on_a_cpu, "PASS")
    assert set(status.values()) == {"SKIP"}
    # and the report and the benchmark's results were written
    assert "| LoRA adapter | PASS |" in (tmp_path / "gpu-check.md").read_text()
    bench = json.loads((tmp_path / "gpu-bench-cpu-smoke.json").read_text())
    assert bench["embeddings"]["min_cosine_to_loop"] > 0.9999  # the job's vectors are the hand loop's


class _Rig(SimpleNamespace):
    """A stand-in rig whose GPU side answers ``got`` and whose reference answers ``want`` (no worker)."""

    def outputs(self, client: str, model: str, task: str = "feature-extraction", **fields: Any) -> Any:
        rows = self.want if client == "ref" else self.got
        column = pa.FixedSizeListArray.from_arrays(pa.array(rows.ravel()), rows.shape[1])
        import datasets

        ds = datasets.Dataset(pa.table({"embedding": column}))
        return ds, SimpleNamespace(dtype=fields.get("dtype", "float32"))


def test_an_answer_off_the_reference_fails_its_path() -> None:
    import gpu_paths

    # given GPU vectors that differ from the CPU reference by a little, then by a lot
    want = np.random.default_rng(0).normal(size=(32, 16)).astype(np.float32)
    close = _Rig(gpu=False, ref="ref", main="gpu", want=want, got=want + 1e-7)
    off = _Rig(gpu=False, ref="ref", main="gpu", want=want, got=want[::-1].copy())
    # then the first passes and the second fails, saying what it measured
    assert gpu_paths.embeddings(close, "float32")["status"] == "PASS"
    failed = gpu_paths.embeddings(off, "float32")
    assert failed["status"] == "FAIL" and "min cosine" in failed["detail"]


def test_greedy_text_passes_only_where_each_token_is_float32s_choice_or_a_near_tie(tmp_path: Path) -> None:
    import gpu_answers
    import gpu_models
    import torch
    import transformers

    from hfqueue.tasks.generation import finished
    from tests.tiny_models import sentences

    # given the check's decoder, and greedy continuations from its own library's generate
    folder = gpu_models.decoder(tmp_path / "decoder", hidden=128, layers=4, heads=4)
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    loaded = SimpleNamespace(tokenizer=tok, model=transformers.AutoModelForCausalLM.from_pretrained(folder).eval())
    prompts = sentences(8, seed=2)

    def greedy(batch: list[str], side: str) -> tuple[list[str], list[int]]:
        tok.padding_side = side
        enc = tok(batch, return_tensors="pt", padding=True)
        with torch.inference_mode():
            out = loaded.model.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
        ends = finished(loaded, out[:, enc["input_ids"].shape[1]:], None)
        return [text for text, _, _ in ends], [n for _, _, n in ends]

    own = [greedy([p], "left") for p in prompts]
    texts, counts = [t[0] for t, _ in own], [n[0] for _, n in own]
    padded_right = greedy(prompts, "right")  # the classic decoder-only batching bug
    # when each is measured against the float32 model, teacher-forced along it
    gaps = {name: gpu_answers.greedy_gaps(folder, prompts, *answer, tie=0.05) for name, answer in {
        "own": (texts, counts), "right-padded": padded_right,
        "another row's": (texts[1:] + texts[:1], counts[1:] + counts[:1])}.items()}
    # then the library's own greedy text is float32's choice at every token, and the wrong answers fail
    assert gaps["own"] == [0.0] * 8
    assert sum(gap > 0.05 for gap in gaps["right-padded"]) >= 6, gaps
    assert all(gap > 0.05 for gap in gaps["another row's"]), gaps


@pytest.mark.parametrize(("gpus", "names", "ok"), [
    (["0", "1"], {101: "gpu-gpu1", 102: "gpu-gpu0"}, True),
    (["GPU-aaa", "GPU-bbb"], {101: "gpu-gpuGPU-bbb", 102: "gpu-gpuGPU-aaa"}, True),  # CUDA_VISIBLE_DEVICES by UUID
    (["0", "1"], {101: "gpu-gpu0", 102: "gpu-gpu1"}, False),  # each on the other's GPU
])
def test_the_device_path_matches_each_workers_name_with_the_gpu_nvidia_smi_runs_it_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gpus: list[str], names: dict[int, str], ok: bool) -> None:
    import gpu_paths

    # given nvidia-smi listing two GPUs and running pid 101 on GPU 1 and 102 on GPU 0 (a stand-in script: this
    # machine has no GPU), and GPU workers named as `hfq worker --gpus` names them
    smi = tmp_path / "nvidia-smi"
    smi.write_text('#!/bin/sh\ncase "$1" in\n  --query-gpu=uuid,index) printf "GPU-aaa, 0\\nGPU-bbb, 1\\n";;\n'
                   '  --query-compute-apps=pid,gpu_uuid) printf "101, GPU-bbb\\n102, GPU-aaa\\n";;\nesac\n')
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    workers = [SimpleNamespace(name=f"{name}@host", device="cuda", pid=pid, queue="gpu") for pid, name in names.items()]
    rig = _Rig(gpu=True, gpus=gpus, main=SimpleNamespace(live_workers=lambda: workers))
    # when the path checks them, then it passes only where each name is the GPU its pid runs on
    assert gpu_paths.worker_devices(rig)["status"] == ("PASS" if ok else "FAIL")


def test_the_wheelhouse_carries_what_the_host_lacks_never_torch() -> None:
    import wheelhouse

    # given what pip resolves and what the host has
    resolved = {"torch": "2.13.0", "nvidia-cublas-cu12": "12.8", "triton": "3.6", "celery": "5.5.3",
                "numpy": "2.3.0", "transformers": "5.24.0", "sentence-transformers": "6.2.0",
                "pydantic-core": "2.41.0", "bitsandbytes": "0.50.2"}
    host, anyway = wheelhouse.host_packages()
    # then the plan carries the missing ones and what must be newer, never the GPU stack, and keeps the host's
    # transformers (it meets hfqueue's range)
    assert wheelhouse.plan(resolved, host, anyway) == {"bitsandbytes": "0.50.2", "celery": "5.5.3",
                                                       "pydantic-core": "2.41.0", "sentence-transformers": "6.2.0"}


def test_past_its_budget_the_rest_is_skipped_and_the_report_follows_each_path() -> None:
    import gpu_paths

    # given a deadline already past, and a report writer counting what it is given
    written: list[int] = []
    # when the checks run
    verdicts = gpu_paths.run_checks(_Rig(gpu=False), deadline=0.0, done=lambda so_far: written.append(len(so_far)))
    # then every path is skipped as out of time, and the report was rewritten after each one
    assert {(v["status"], v["detail"]) for v in verdicts} == {("SKIP", "out of time (--budget)")}
    assert written == list(range(1, len(gpu_paths.CHECKS) + 1))
