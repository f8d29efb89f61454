"""Planning a job at submit time: check what can be checked cheaply, then cut the rows into chunks.

Everything that can fail here fails before anything is written or enqueued.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hfqueue import sources, tasks
from hfqueue.cache.versions import dataset_version
from hfqueue.core import paths
from hfqueue.core.config import Settings
from hfqueue.core.jobs import Chunk, JobSpec, Source, plan_chunks
from hfqueue.core.messages import ChunkMessage
from hfqueue.errors import InvalidSpecError
from hfqueue.sinks import publish
from hfqueue.sinks.local import MANIFEST, part_files, resolve_output_dir


@dataclass
class Plan:
    """A checked job: its source, row count, chunks and output folder."""

    spec: JobSpec
    source: Source
    rows_total: int
    chunks: list[Chunk]
    output_dir: Path


def plan_job(spec: JobSpec, settings: Settings, job_id: str) -> Plan:
    """Check model, source, column and output folder; count rows; cut chunks.

    Local paths are checked against the roots first, before anything under them is read.
    """
    assert spec.model is not None  # JobSpec fills in the task's default model
    paths.check_model_path(spec.model, settings.input_roots)
    if spec.adapter is not None:
        paths.check_model_path(spec.adapter, settings.input_roots, what="adapter")
    problem = tasks.get(spec.task).model_problem(spec.model, spec.revision, spec.options)
    if problem:
        raise InvalidSpecError(f"model {spec.model!r} cannot run task {spec.task!r}: {problem}", value=spec.model)
    output_dir = resolve_output_dir(settings.output_root, spec.output_dir, job_id)
    if (output_dir / MANIFEST).exists() or part_files(output_dir):
        raise InvalidSpecError(f"output_dir {output_dir} already holds a job's results; choose another folder",
                               value=spec.output_dir)
    if spec.output:
        publish.check(spec.output, settings)
    source = pinned(sources.resolve(spec, settings.input_roots))
    if spec.inputs is not None:
        rows = len(spec.inputs)
        if rows > settings.max_inline_rows:
            raise InvalidSpecError(
                f"{rows} inline inputs exceed HFQ_MAX_INLINE_ROWS ({settings.max_inline_rows}); "
                "save them as a dataset or data file and submit that instead", value=rows)
    else:
        rows = len(sources.open_dataset(source))
    if rows == 0:
        raise InvalidSpecError(f"split {spec.split!r} of {spec.dataset!r} has no rows", value=spec.dataset)
    chunks = plan_chunks(rows, spec.chunk_size or settings.chunk_size)
    return Plan(spec, source, rows, chunks, output_dir)


def pinned(source: Source) -> Source:
    """A Hub dataset's source at the commit its revision points at now. Counted here and read by every chunk (and
    by a resume) at that commit: a push to the branch while the job runs changes nothing in it, and the next job
    reads the new commit (a worker's opened datasets are keyed by it). Left as it is when no commit can be known
    (offline and not in the local Hub cache: opening it then fails with the reason anyway)."""
    if source.kind != "hub" or source.path is None or paths.looks_local(source.path):
        return source
    commit = dataset_version(source.path, source.revision)
    return source.model_copy(update={"revision": commit}) if commit else source


def messages(plan: Plan, job_id: str, only: set[int] | None = None) -> Iterator[ChunkMessage]:
    """The chunk messages (of the chunks in ``only``, when given): references to the rows, or the rows
    themselves for inline inputs."""
    spec = plan.spec.model_dump(mode="json", exclude={"inputs"})
    for chunk in plan.chunks:
        if only is not None and chunk.index not in only:
            continue
        inline = plan.spec.inputs[chunk.start:chunk.end] if plan.spec.inputs is not None else None
        yield ChunkMessage(job_id=job_id, chunk=chunk, spec=spec, source=plan.source, output_dir=str(plan.output_dir),
                           inputs=inline, sent_at=time.time())
