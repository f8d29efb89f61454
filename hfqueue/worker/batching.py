"""Forming batches: pure functions, tested on their own.

Rows are sorted by token length (longest first, so a batch that does not fit in memory shows up at
once) and cut into batches under two limits: ``max_batch_size`` rows, and ``max_batch_tokens`` padded
tokens, i.e. rows x the longest row in the batch, which is what a padded forward pass costs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


def plan_batches(lengths: Sequence[int], max_batch_size: int, max_batch_tokens: int) -> list[list[int]]:
    """Group row indexes into batches of similar length under both limits.

    Every index appears in exactly one batch. A row longer than the token budget forms a batch alone
    rather than being dropped.

    >>> plan_batches([5, 50, 6, 48], max_batch_size=8, max_batch_tokens=100)
    [[1, 3], [2, 0]]
    """
    if max_batch_size <= 0 or max_batch_tokens <= 0:
        raise ValueError("max_batch_size and max_batch_tokens must be > 0")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # Sorted longest first, so the batch's first row sets its padded width.
        width = lengths[current[0]] if current else lengths[i]
        if current and (len(current) >= max_batch_size or (len(current) + 1) * width > max_batch_tokens):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def padding_efficiency(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Real tokens / padded tokens over all batches (1.0 means no padding)."""
    real = sum(lengths[i] for b in batches for i in b)
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches if b)
    return real / padded if padded else 1.0


def gather(first: T, take: Callable[[], T | None], rows_of: Callable[[T], int], *, max_rows: int,
           max_wait_s: float, clock: Callable[[], float] = time.monotonic) -> list[T]:
    """``first`` plus whatever else is waiting, for one shared forward pass.

    Takes items with ``take()`` (which returns None when nothing is waiting, without blocking) until
    they hold ``max_rows`` rows, ``max_wait_s`` has passed since the call, or nothing is waiting —
    whichever comes first. So a lone request never waits for company that is not coming, and a
    steady stream is cut off by the deadline. The last item taken may carry the total past
    ``max_rows``; the batch planner splits it.

    >>> waiting = [["b"], ["c", "d"], ["e"]]
    >>> gather(["a"], lambda: waiting.pop(0) if waiting else None, len, max_rows=3, max_wait_s=1.0)
    [['a'], ['b'], ['c', 'd']]
    """
    deadline = clock() + max_wait_s
    items, rows = [first], rows_of(first)
    while rows < max_rows and clock() < deadline:
        item = take()
        if item is None:
            break
        items.append(item)
        rows += rows_of(item)
    return items


@dataclass
class TokenBudget:
    """The padded-token budget of one model on one device for one job; shrinks when a batch runs out of memory.

    >>> budget = TokenBudget(4096)
    >>> budget.shrink(3000); budget.tokens
    1500
    """

    tokens: int
    floor: int = 64

    def shrink(self, batch_tokens: int) -> None:
        """A batch of ``batch_tokens`` padded tokens ran out of memory: allow half of it from now on."""
        self.tokens = max(self.floor, min(self.tokens, batch_tokens // 2))
