"""What a job is: its spec, its states, its chunks and its status."""

from __future__ import annotations

import enum
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

from hfqueue import tasks


class JobState(str, enum.Enum):
    """Where a job is in its life. The last four are final.

    ``finalizing``: every chunk is done and the results are being published to the job's ``output``.
    """

    QUEUED = "queued"
    RUNNING = "running"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    COMPLETED_WITH_ERRORS = "completed_with_errors"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        """True once nothing more will happen to the job."""
        return self.value not in OPEN_STATES


# The states a job can still leave: every transition out of "not over yet" starts from one of these.
OPEN_STATES = (JobState.QUEUED.value, JobState.RUNNING.value, JobState.FINALIZING.value)


class JobSpec(BaseModel):
    """Everything a worker needs to run a job: which model, which task, over which rows, where to.

    Give either ``inputs`` (a list carried inline) or ``dataset`` (a Hub dataset id, a local
    ``save_to_disk`` folder, or data files: a csv/json/jsonl/parquet path, glob or list of them).
    A task reads one field per row (``text``, ``image``, ``audio``, chat ``messages``) or several
    (question-answering: ``question`` and ``context``); ``column`` or ``columns`` say where they are.

    >>> JobSpec(task="sentiment-analysis", model="my/model", inputs=["great", "awful"]).columns
    {'text': 'text'}
    """

    model_config = ConfigDict(extra="forbid")

    task: str = Field(description="Task name or alias, e.g. feature-extraction, text-classification.",
                      json_schema_extra={"enum": tasks.known_names()})
    model: str | None = Field(None, min_length=1, description="Hub model id or local folder; default: the task's.")
    revision: str | None = Field(None, description="Model branch, tag or commit (Hub models).")
    adapter: str | None = Field(None, min_length=1, description="PEFT adapter (LoRA, ...) to run `model` with: Hub "
                                "id or local folder. Workers keep the base model resident and apply adapters on it.")
    inputs: list[str | dict[str, Any] | list[dict[str, Any]]] | None = Field(
        None, description="Rows to run, carried inline: strings, {field: value} dicts, or chat message lists.",
        json_schema_extra={"minItems": 1})  # in the schema; the validator below says it in words
    dataset: str | list[str] | None = Field(None, description="Hub dataset id, local dataset folder or data files.")
    dataset_config: str | None = Field(None, description="Dataset configuration (subset) name.")
    split: str = Field("train", description="Dataset split to read.")
    dataset_revision: str | None = Field(None, description="Dataset branch, tag or commit (Hub datasets).")
    column: str | None = Field(None, min_length=1, description="Column of a one-field task; default: the task's.")
    columns: dict[str, str] | None = Field(None, description="Task field -> dataset column, e.g. "
                                           "{'question': 'q', 'context': 'passage'}.")
    output_dir: str | None = Field(None, description="Folder under the output root; default: the job id.")
    output: str | None = Field(None, description="Also publish the finished results here: hub://<namespace>/<name>"
                               "[@<branch>] (a Hub dataset repo) or an fsspec URL (s3://..., hf://..., a local path).")
    output_private: bool = Field(True, description="A Hub repo created for `output` is private (false: public).")
    chunk_size: int | None = Field(None, gt=0, description="Rows per chunk; default HFQ_CHUNK_SIZE.")
    options: dict[str, Any] = Field(default_factory=dict, description="Task options, e.g. {'pooling': 'cls'}.")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] | None = Field(
        None, description="Precision the model runs in (auto: bfloat16/float16 on CUDA, float32 on CPU); "
                          "default HFQ_DTYPE."
    )
    engine: Literal["torch", "onnx", "onnx-int8"] | None = Field(
        None, description="Engine the model body runs on: torch, onnx (ONNX Runtime, float32) or onnx-int8; default "
                          "HFQ_ENGINE where the task has it. Encoder tasks only; verified against torch at load.")
    quantization: Literal["8bit", "4bit"] | None = Field(
        None, description="Load weights quantized with bitsandbytes (CUDA workers with bitsandbytes only).")
    trust_remote_code: bool = Field(False, description="Run code shipped with the model (worker must allow it).")
    truncate: StrictBool = Field(True, description="Cut a row longer than the model takes to its input limit (and "
                                 "count it); false: send such a row to the error file instead.")
    reuse: bool | None = Field(
        None, description="Copy rows run before (same model, revision, options, precision, engine) from the result "
                          "cache instead of computing them, and store new results there; default HFQ_REUSE (true).")
    priority: Literal["high", "normal", "low"] = Field(
        "normal", description="Queued chunks of higher priority run first (strict: low runs when nothing else waits).")

    @field_validator("task")
    @classmethod
    def _known_task(cls, name: str) -> str:
        return tasks.canonical_name(name)

    @field_validator("output")
    @classmethod
    def _destination(cls, url: str | None) -> str | None:
        from hfqueue.core.destinations import parse

        return None if url is None else parse(url).url

    @model_validator(mode="after")
    def _complete(self) -> "JobSpec":
        task = tasks.get(self.task)
        if (self.inputs is None) == (self.dataset is None):
            raise ValueError("give exactly one of `inputs` (a list of rows) or `dataset`")
        if self.inputs is not None and not self.inputs:
            raise ValueError("`inputs` is empty: give at least one row")
        if self.model is None:
            self.model, default_revision = task.default_model
            self.revision = self.revision or default_revision
        self.columns = task.resolve_columns(self.column, self.columns)
        for name in task.optional_fields:  # inline rows that hold an optional field (a text_pair) echo it too
            if self.dataset is None and any(isinstance(row, dict) and name in row for row in self.inputs or []):
                self.columns.setdefault(name, name)
        if len(self.columns) == 1:
            self.column = self.columns[task.fields[0]]
        self.options = task.validate_options(self.options)
        problem = _engine_problem(self, task.engines)
        if problem:
            raise ValueError(problem)
        for i, row in enumerate(self.inputs or []):
            problem = task.row_problem(row)
            if problem:
                raise ValueError(f"inputs[{i}]: {problem}")
        return self


# Fields that say where a job's rows come from and go to; the rest decide how the model runs.
JOB_ONLY_FIELDS = frozenset({"inputs", "output_dir", "output", "output_private", "dataset", "dataset_config", "split", "dataset_revision",
                             "column", "columns", "chunk_size", "priority"})

PRIORITIES = ("high", "normal", "low")  # in the order workers take from their queues


def priority_queue(queue: str, priority: str) -> str:
    """The Celery queue of ``priority`` for base queue ``queue``: ``hfq.high``, ``hfq``, ``hfq.low``.

    Workers consume all three in that order (kombu's ``priority`` queue order), so a queued high chunk is
    taken before any normal one. Separate queues rather than Redis message priorities keep the normal
    queue a plain list of the configured name, which KEDA and operators can watch.

    >>> [priority_queue("hfq", p) for p in PRIORITIES]
    ['hfq.high', 'hfq', 'hfq.low']
    """
    return queue if priority == "normal" else f"{queue}.{priority}"


def model_fields(spec: JobSpec) -> dict[str, Any]:
    """The part of a spec that decides how rows run (task, model, load options, options): rows whose specs
    agree on it can share a forward pass."""
    return spec.model_dump(mode="json", exclude=set(JOB_ONLY_FIELDS))


class Source(BaseModel):
    """Where a chunk's rows come from, resolved at submit time. Messages carry this, not the rows."""

    kind: Literal["inline", "disk", "files", "hub"]
    path: str | None = None
    data_files: list[str] | None = None
    builder: str | None = None
    config: str | None = None
    split: str | None = None
    revision: str | None = None
    columns: dict[str, str] = Field(default_factory=lambda: {"text": "text"})  # task field -> dataset column


class Chunk(BaseModel):
    """Rows ``[start, end)`` of a job, written as part ``index``."""

    index: int
    start: int
    end: int

    @property
    def rows(self) -> int:
        """Number of rows in the chunk."""
        return self.end - self.start


def plan_chunks(total_rows: int, chunk_size: int) -> list[Chunk]:
    """Split ``total_rows`` rows into consecutive chunks of at most ``chunk_size`` rows.

    >>> [(c.start, c.end) for c in plan_chunks(5, 2)]
    [(0, 2), (2, 4), (4, 5)]
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be > 0, got {chunk_size}")
    return [
        Chunk(index=i, start=start, end=min(start + chunk_size, total_rows))
        for i, start in enumerate(range(0, total_rows, chunk_size))
    ]


class JobStatus(BaseModel):
    """A snapshot of a job's progress, as ``Job.status()`` and ``hfq status`` report it."""

    job_id: str
    state: JobState
    task: str
    model: str
    rows_total: int
    rows_done: int = 0
    rows_failed: int = 0
    rows_truncated: int = 0  # of rows_done: rows cut to the model's input limit
    rows_reused: int = 0  # of rows_done: rows copied from the result cache, not computed (hfqueue.cache)
    chunks_total: int
    chunks_done: int = 0
    chunks_failed: int = 0
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    output_dir: str
    error: str | None = None
    dtype: str | None = None  # the precision the model ran in (known once a chunk ran; hfqueue.tasks.precision)
    exact_batches: int = 0  # reduced-precision batches that came out NaN or inf and ran again in float32

    @property
    def elapsed(self) -> float:
        """Seconds since the first chunk started (to the end, once final)."""
        if self.started_at is None:
            return 0.0
        return (self.finished_at or time.time()) - self.started_at

    @property
    def rows_per_second(self) -> float:
        """Rows finished per second of running time."""
        return (self.rows_done + self.rows_failed) / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta_seconds(self) -> float | None:
        """Estimated seconds until all rows are done, at the current rate; None before a rate exists."""
        if self.state.is_final:
            return 0.0
        rate = self.rows_per_second
        left = self.rows_total - self.rows_done - self.rows_failed
        return left / rate if rate > 0 else None

    def summary(self) -> dict[str, Any]:
        """The status with its derived numbers, for JSON output."""
        out = self.model_dump(mode="json")
        out.update(
            rows_per_second=round(self.rows_per_second, 2),
            eta_seconds=None if self.eta_seconds is None else round(self.eta_seconds, 1),
            elapsed_seconds=round(self.elapsed, 2),
        )
        return out


def _engine_problem(spec: JobSpec, engines: tuple[str, ...]) -> str | None:
    """Why the spec's ``engine`` cannot run it, or None."""
    if spec.engine in (None, "torch"):
        return None
    if spec.engine not in engines:
        return f"engine {spec.engine!r} cannot run task {spec.task!r}; it runs on {', '.join(engines)}"
    clash = [f"{name}={value!r}" for name, value in (("adapter", spec.adapter), ("quantization", spec.quantization))
             if value is not None]
    if spec.dtype in ("float16", "bfloat16"):
        clash.append(f"dtype={spec.dtype!r}")
    if clash:
        return f"engine {spec.engine!r} runs an export of the float32 model alone; drop {' and '.join(clash)}"
    return None
