"""An OpenAI batch's life: the only code that moves a batch between states (OpenAI's own state names).

    validating ──jobs sent──▶ in_progress ──last job ended──▶ finalizing ──files written──▶ completed
        │  └─ no valid line / could not send ─▶ failed
        └──────────── cancel ──▶ cancelling ──files written──▶ cancelled

What happens between the moves (sending jobs, writing the output files) is :mod:`hfqueue.openai_batch`'s.
"""

from __future__ import annotations

import enum

from hfqueue.state.batches import BatchStore


class BatchState(str, enum.Enum):
    """Where an OpenAI batch is; the values are OpenAI's ``status`` strings."""

    VALIDATING = "validating"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        """True once nothing more will happen to the batch."""
        return self in (BatchState.COMPLETED, BatchState.FAILED, BatchState.EXPIRED, BatchState.CANCELLED)

    @property
    def is_running(self) -> bool:
        """True while its jobs were sent and its output files are not written yet."""
        return self in (BatchState.IN_PROGRESS, BatchState.FINALIZING, BatchState.CANCELLING)


def state_of(batches: BatchStore, batch_id: str) -> BatchState | None:
    """The batch's state, or None when Redis has no such batch."""
    value = batches.fields(batch_id, "state")[0]
    return BatchState(value) if value else None


def sent(batches: BatchStore, batch_id: str, jobs: list[str]) -> bool:
    """Its jobs are on their way: validating → in_progress. False when it was cancelled meanwhile (the jobs are
    recorded then too, so they can be cancelled)."""
    if batches.move(batch_id, BatchState.IN_PROGRESS.value, (BatchState.VALIDATING.value,), "in_progress_at",
                    jobs=jobs):
        return True
    batches.set_fields(batch_id, jobs=jobs)
    return False


def fail(batches: BatchStore, batch_id: str, **counts: int) -> bool:
    """No line was valid, or its jobs could not be sent: validating → failed."""
    return batches.move(batch_id, BatchState.FAILED.value, (BatchState.VALIDATING.value,), "failed_at", **counts)


def cancel(batches: BatchStore, batch_id: str) -> bool:
    """validating or in_progress → cancelling; False when it was past that."""
    return batches.move(batch_id, BatchState.CANCELLING.value,
                        (BatchState.VALIDATING.value, BatchState.IN_PROGRESS.value), "cancelling_at")


def finalizing(batches: BatchStore, batch_id: str) -> bool:
    """Every job ended and its files are being written: in_progress (or finalizing, a writer that died) →
    finalizing."""
    return batches.move(batch_id, BatchState.FINALIZING.value,
                        (BatchState.IN_PROGRESS.value, BatchState.FINALIZING.value), "finalizing_at")


def finished(batches: BatchStore, batch_id: str, *, cancelled: bool, completed: int, failed: int) -> BatchState:
    """The output files are written: finalizing → completed, or cancelling → cancelled; the state it ended in."""
    final = BatchState.CANCELLED if cancelled else BatchState.COMPLETED
    batches.move(batch_id, final.value, (BatchState.FINALIZING.value, BatchState.CANCELLING.value),
                 f"{final.value}_at", completed_requests=completed, failed_requests=failed)
    return final
