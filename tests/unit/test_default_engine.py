"""HFQ_ENGINE, the operator's engine for jobs that name none, applies only where the engine can run the job."""

from __future__ import annotations

import pytest

from hfqueue import tasks
from hfqueue.core.config import Settings
from hfqueue.core.jobs import JobSpec
from hfqueue.worker.context import WorkerContext
from hfqueue.worker.models import ModelCache

pytestmark = pytest.mark.timeout(10)


@pytest.mark.parametrize(("dtype", "device", "engine"), [
    ("float32", "cpu", "onnx"),
    ("float32", "cuda", "torch"),  # onnx runs on the CPU only: a GPU worker's job would fail on it
    ("float32", "cuda:1", "torch"),
    ("bfloat16", "cpu", "torch"),  # the engines hold float32 weights
])
def test_the_operators_engine_applies_only_where_it_can_run_the_job(dtype: str, device: str, engine: str) -> None:
    # given a worker whose operator set HFQ_ENGINE=onnx, and a feature-extraction job naming no engine
    ctx = WorkerContext(Settings(engine="onnx"), None, None, ModelCache(1))  # type: ignore[arg-type]
    spec = JobSpec(task="feature-extraction", model="sentence-transformers/all-MiniLM-L6-v2", inputs=["a row"])
    # then the job runs on onnx only on the CPU, in float32
    assert ctx.default_engine(tasks.get("feature-extraction"), spec, dtype, device) == engine
