"""The worker's own check of a chunk message, before it reads or writes anything.

The producer checked the same paths at submit, but the wire is not trusted: anyone who can write to
Redis can forge a message. So the worker first validates each message's shape where it reads it
(:class:`~hfqueue.core.messages.ChunkMessage`, :class:`~hfqueue.core.messages.LaneEntry`): one that does
not validate cannot name its job reliably, so it is refused and logged, and nothing is read or written.
Then it checks, against its own settings, that the message's source lies inside ``HFQ_INPUT_ROOTS``, its
output folder inside ``HFQ_OUTPUT_ROOT`` and its ``output`` URL (if any) within ``HFQ_OUTPUT_URLS``; the
model folder is checked where every way to a model passes, :meth:`WorkerContext.model`. A message that
fails these fails its whole job (every chunk would fail the same way) and nothing is written where it
pointed: the reason goes to the job record and to the manifest in the job's recorded folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from hfqueue import sources
from hfqueue.core import paths
from hfqueue.core.config import Settings
from hfqueue.core.messages import ChunkMessage
from hfqueue.errors import InvalidSpecError
from hfqueue.sinks import publish
from hfqueue.sinks.local import ERRORS
from hfqueue.worker import chunks
from hfqueue.worker.context import WorkerContext


def invalid(exc: ValidationError) -> str:
    """Why a message does not validate, in one line: each bad field and what is wrong with it (never its value,
    which may carry rows)."""
    why = "; ".join(f"{'.'.join(str(part) for part in error['loc']) or 'message'}: {error['msg']}"
                    for error in exc.errors(include_url=False, include_input=False))
    return why[:500]  # a message built to fail everywhere must not flood the log


def check_message(settings: Settings, message: ChunkMessage) -> None:
    """Raise :class:`InvalidSpecError` when a chunk message names a path outside this worker's roots."""
    # absolute(): the path as the chunk will use it, relative to this process, not to the root.
    out_dir = paths.check_output_dir(settings.output_root, Path(message.output_dir).absolute())
    # A chunk writes its error part under errors/: a symlink there would lead the write out.
    paths.check_output_dir(settings.output_root, out_dir / ERRORS)
    sources.check_source(message.source, settings.input_roots)
    output = message.spec.get("output")
    if output:  # refused before any row runs, not after the whole job did
        publish.check(str(output), settings)


def refuse(ctx: WorkerContext, message: ChunkMessage) -> dict[str, Any] | None:
    """None when the message may run; else fail its job with the reason and return the chunk's outcome."""
    try:
        check_message(ctx.settings, message)
    except InvalidSpecError as exc:
        return chunks.fail_job(ctx, message.job_id, exc)
    return None
