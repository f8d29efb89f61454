"""What ``hfq status``, ``hfq jobs`` and ``hfq workers`` print: a live view or tables on a terminal (rich),
plain text otherwise, and the same facts as JSON for scripts."""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from hfqueue.core.jobs import JobStatus
from hfqueue.state.presence import WorkerInfo

if TYPE_CHECKING:
    from hfqueue.producer.client import Job

CHUNK_STATES = ("queued", "running", "done", "failed")


def chunk_counts(status: JobStatus, chunks: dict[int, dict[str, Any]]) -> dict[str, int]:
    """How many chunks are queued, running, done and failed (a chunk with no record yet is queued)."""
    seen = Counter(str(info.get("state")) for info in chunks.values())
    counts = {state: seen.get(state, 0) for state in CHUNK_STATES[1:]}
    counts["queued"] = max(0, status.chunks_total - sum(counts.values()))
    return {state: counts[state] for state in CHUNK_STATES}


def status_json(status: JobStatus, chunks: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The status summary plus chunk state counts and the workers running its chunks."""
    return {**status.summary(), "chunk_counts": chunk_counts(status, chunks), "running_on": _running_on(chunks)}


def status_text(status: JobStatus, chunks: dict[int, dict[str, Any]], bar: str | None = None) -> str:
    """A job's progress as lines of text; ``bar`` replaces the ASCII progress bar (the live view draws its own)."""
    s = status
    finished = s.rows_done + s.rows_failed
    fraction = finished / s.rows_total if s.rows_total else 1.0
    eta = "-" if s.eta_seconds is None else f"{s.eta_seconds:.0f} s"
    counts = chunk_counts(s, chunks)
    running_on = _running_on(chunks)
    lines = [
        f"job {s.job_id}: {s.state.value} · {s.task} · {s.model}" + (f" · {s.dtype}" if s.dtype else "")
        + (f" ({s.exact_batches} batches again in float32)" if s.exact_batches else ""),
        f"{bar if bar is not None else ascii_bar(fraction)} {fraction:4.0%}  {finished}/{s.rows_total} rows",
        f"rows/s {s.rows_per_second:.1f} · ETA {eta} · elapsed {s.elapsed:.1f} s · errors {s.rows_failed} rows"
        + (f" · truncated {s.rows_truncated} rows" if s.rows_truncated else "")
        + (f" · reused {s.rows_reused} rows" if s.rows_reused else ""),
        "chunks: " + " · ".join(f"{counts[k]} {k}" for k in CHUNK_STATES)
        + (f" (running on {', '.join(running_on)})" if running_on else ""),
        f"output: {s.output_dir}",
    ]
    if s.error:
        lines.append(f"error: {s.error}")
    return "\n".join(lines)


def ascii_bar(fraction: float, width: int = 30) -> str:
    """``[#########.....]`` filled to ``fraction``."""
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return "[" + "#" * filled + "." * (width - filled) + "]"


def live_status(job: "Job", interval: float = 0.5) -> JobStatus:
    """Redraw the job's progress in place until it ends; return the final status."""
    from rich.console import Group
    from rich.live import Live
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    def frame() -> tuple[JobStatus, Group]:
        status, chunks = job.status(), job.chunks()
        lines = status_text(status, chunks, bar="").splitlines()
        bar_row = Table.grid(padding=(0, 1))
        bar_row.add_row(ProgressBar(total=max(1, status.rows_total), completed=status.rows_done + status.rows_failed,
                                    width=40), Text(lines[1].strip()))
        return status, Group(Text(lines[0], style="bold"), bar_row, *(Text(line) for line in lines[2:]))

    status, view = frame()
    with Live(view, auto_refresh=False) as live:
        while not status.state.is_final:
            time.sleep(interval)
            status, view = frame()
            live.update(view, refresh=True)
    return status


def jobs_table(statuses: list[JobStatus], terminal: bool) -> str | Any:
    """Recent jobs: a rich table on a terminal, fixed-width text otherwise."""
    header = ("JOB", "STATE", "ROWS", "FAILED", "ROWS/S", "TASK", "MODEL")
    rows = [(s.job_id, s.state.value, f"{s.rows_done + s.rows_failed}/{s.rows_total}", str(s.rows_failed),
             f"{s.rows_per_second:.1f}", s.task, s.model) for s in statuses]
    return _table(header, rows, terminal)


def workers_table(workers: list[WorkerInfo], terminal: bool) -> str | Any:
    """Live workers with their devices, resident models (and how many PEFT adapters each has applied) and memory."""
    header = ("WORKER", "DEVICE", "MODELS", "MEMORY", "METRICS", "UP")
    rows = []
    for w in workers:
        gpu = "".join(f" · {g['device']} {_mib(g['allocated'])}/{_mib(g['total'])}" for g in w.gpu)
        models = ", ".join(f"{m['model']}{_commit(m)} ({m['task']}{_adapters(m)})" for m in w.models) or "-"
        rows.append((w.name, ", ".join(w.devices) or w.device, models, f"{_mib(w.rss_bytes)} RSS{gpu}",
                     w.metrics_url or "-", f"{time.time() - w.started_at:.0f} s"))
    return _table(header, rows, terminal)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], terminal: bool) -> str | Any:
    if terminal:
        from rich.table import Table

        table = Table(*header, box=None, header_style="bold")
        for row in rows:
            table.add_row(*row)
        return table
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
                     for line in [header, *rows])


def _commit(model: dict[str, Any]) -> str:
    """``@<short commit>`` for a Hub model: which commit its worker runs (a branch can move)."""
    version = model.get("version") or ""
    return f"@{version[:7]}" if re.fullmatch(r"[0-9a-f]{40}", version) else ""


def _adapters(model: dict[str, Any]) -> str:
    count = len(model.get("adapters") or [])
    return f" + {count} adapter{'s' if count > 1 else ''}" if count else ""


def _running_on(chunks: dict[int, dict[str, Any]]) -> list[str]:
    return sorted({str(info.get("worker")) for info in chunks.values() if info.get("state") == "running"})


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.0f} MiB"


def batch_text(obj: dict[str, Any]) -> str:
    """A few lines about an OpenAI batch object: state, request counts, files."""
    counts = obj["request_counts"]
    lines = [f"batch {obj['id']}: {obj['status']} ({obj['endpoint']})",
             f"requests: {counts['total']} total, {counts['completed']} completed, {counts['failed']} failed"]
    for name, key in (("output", "output_file_id"), ("errors", "error_file_id")):
        if obj.get(key):
            lines.append(f"{name}: {obj[key]}")
    return "\n".join(lines)
