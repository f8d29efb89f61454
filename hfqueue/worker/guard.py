"""The worker's own check of a chunk message's paths, before it reads or writes anything.

The producer checked the same paths at submit, but the wire is not trusted: anyone who can write to
Redis can forge a message. So the worker checks, against its own settings, that the message's source
lies inside ``HFQ_INPUT_ROOTS``, its output folder inside ``HFQ_OUTPUT_ROOT`` and its ``output`` URL (if any)
within ``HFQ_OUTPUT_URLS``; the model folder is
checked where every way to a model passes, :meth:`WorkerContext.model`. A
message that fails fails its whole job (every chunk would fail the same way) and nothing is written
where it pointed: the reason goes to the job record and to the manifest in the job's recorded folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hfqueue import sources
from hfqueue.core import paths
from hfqueue.core.config import Settings
from hfqueue.core.jobs import Source
from hfqueue.errors import InvalidSpecError
from hfqueue.sinks import publish
from hfqueue.sinks.local import ERRORS
from hfqueue.worker import chunks
from hfqueue.worker.context import WorkerContext


def check_message(settings: Settings, message: dict[str, Any]) -> None:
    """Raise :class:`InvalidSpecError` when a chunk message names a path outside this worker's roots."""
    # absolute(): the path as the chunk will use it, relative to this process, not to the root.
    out_dir = paths.check_output_dir(settings.output_root, Path(message["output_dir"]).absolute())
    # A chunk writes its error part under errors/: a symlink there would lead the write out.
    paths.check_output_dir(settings.output_root, out_dir / ERRORS)
    sources.check_source(Source(**message["source"]), settings.input_roots)
    output = (message.get("spec") or {}).get("output")
    if output:  # refused before any row runs, not after the whole job did
        publish.check(str(output), settings)


def refuse(ctx: WorkerContext, message: dict[str, Any]) -> dict[str, Any] | None:
    """None when the message may run; else fail its job with the reason and return the chunk's outcome."""
    try:
        check_message(ctx.settings, message)
    except InvalidSpecError as exc:
        return chunks.fail_job(ctx, str(message["job_id"]), exc)
    return None
