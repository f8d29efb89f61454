"""Batch planning on its own: a grid of row counts, length spreads, size caps and token budgets."""

from __future__ import annotations

import itertools
import random

import pytest

from hfqueue.worker.batching import TokenBudget, padding_efficiency, plan_batches

pytestmark = pytest.mark.timeout(30)

GRID = list(itertools.product([0, 1, 7, 64, 500], [(1, 8), (5, 60), (1, 512)], [1, 8, 64], [64, 512, 4096]))


@pytest.mark.parametrize(("rows", "spread", "max_size", "budget"), GRID)
def test_every_row_once_under_both_limits_longest_first(rows: int, spread: tuple[int, int], max_size: int,
                                                        budget: int) -> None:
    # given rows of random lengths in the spread
    rng = random.Random(rows * 7919 + budget)
    lengths = [rng.randint(*spread) for _ in range(rows)]

    # when they are planned
    batches = plan_batches(lengths, max_size, budget)

    # then each row is in exactly one batch, no batch breaks a limit unless it is one row alone,
    # and batches come longest first with rows sorted within them
    assert sorted(i for b in batches for i in b) == list(range(rows))
    for batch in batches:
        assert 1 <= len(batch) <= max_size
        assert len(batch) == 1 or max(lengths[i] for i in batch) * len(batch) <= budget
        assert [lengths[i] for i in batch] == sorted((lengths[i] for i in batch), reverse=True)
    firsts = [lengths[b[0]] for b in batches]
    assert firsts == sorted(firsts, reverse=True)


def test_sorting_pads_less_than_batching_in_input_order() -> None:
    # given lengths as varied as real sentences
    rng = random.Random(0)
    lengths = [rng.choice([8, 12, 20, 40, 90, 160]) for _ in range(1000)]

    # when planned by length, against batches of 64 in input order
    sorted_plan = plan_batches(lengths, 64, 10**9)
    input_order = [list(range(i, min(i + 64, 1000))) for i in range(0, 1000, 64)]

    # then sorting wastes far less on padding
    assert padding_efficiency(lengths, sorted_plan) > 0.9 > 0.5 > padding_efficiency(lengths, input_order)


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="must be > 0"):
        plan_batches([3, 4], 0, 100)


def test_token_budget_halves_the_failed_batch_and_keeps_a_floor() -> None:
    budget = TokenBudget(4096, floor=128)
    budget.shrink(2000)
    assert budget.tokens == 1000
    budget.shrink(5000)  # a bigger failed batch never raises the budget
    assert budget.tokens == 1000
    budget.shrink(100)
    assert budget.tokens == 128
