"""What travels between producers and workers, defined once: the chunk message, the lane entry, the infer reply.

The producer builds these; the worker validates each one as it reads it, because the wire is not trusted
(anyone who can write to Redis can forge a message): a message missing a field, or carrying one it should
not, is refused before anything runs. Specs travel as JSON and are checked again where they run.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from hfqueue.core.jobs import Chunk, Source


class ChunkMessage(BaseModel):
    """A chunk task's one argument: which rows of which job to run, with the job's spec, and where to write."""

    model_config = ConfigDict(extra="forbid")

    job_id: str
    chunk: Chunk
    spec: dict[str, Any]  # the job's spec as JSON, without its inline rows
    source: Source
    output_dir: str
    inputs: list[Any] | None = None  # the chunk's rows, for inline jobs; else the source is read
    sent_at: float

    def describe(self, chunks_total: int) -> str:
        """What Flower shows as the chunk task's arguments (its ``argsrepr``): never the rows or the paths.

        >>> ChunkMessage(job_id="j1", chunk=Chunk(index=2, start=32, end=48), output_dir="/o", sent_at=0,
        ...              spec={"task": "feature-extraction", "model": "BAAI/bge-small-en-v1.5"},
        ...              source=Source(kind="inline")).describe(5)
        'job j1 · chunk 2 of 5 · rows 32-47 (16) · feature-extraction · BAAI/bge-small-en-v1.5'
        """
        c = self.chunk
        return (f"job {self.job_id} · chunk {c.index} of {chunks_total} · rows {c.start}-{c.end - 1} ({c.rows}) · "
                f"{self.spec.get('task')} · {self.spec.get('model')}")


class LaneEntry(BaseModel):
    """One entry of the request lane: a ``client.infer`` request, or a small job's one chunk (``job``)."""

    model_config = ConfigDict(extra="forbid")

    id: str
    inputs: list[Any]
    spec: dict[str, Any]  # the fields that decide how rows run (hfqueue.core.jobs.model_fields): entries that
    #                       agree on them share forward passes
    sent_at: float
    expires_at: float | None = None  # an infer request: not worth running once its caller gave up
    job: ChunkMessage | None = None  # a small job: its chunk message, its rows in ``inputs``

    @property
    def rows(self) -> int:
        """Number of rows the entry carries."""
        return len(self.inputs)


class InferReply(BaseModel):
    """A worker's answer to one infer request: an output (or None) per input row, and the errors by row."""

    outputs: list[Any]
    errors: dict[int, tuple[str, str]] = {}  # row -> (error type, message)
    seconds: float | None = None
    batched_with: int | None = None  # how many lane entries shared the forward pass
    worker: str | None = None
