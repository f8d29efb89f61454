"""Gathering waiting requests for one forward pass: a grid of waiting work, row caps and deadlines.

Requests wait in a real ``queue.Queue``; deadlines run on a clock the test moves, so each case is
exact rather than timed.
"""

from __future__ import annotations

import itertools
import queue
import time

import pytest

from hfqueue.worker.batching import gather

pytestmark = pytest.mark.timeout(10)


def taker(q: "queue.Queue[list[str]]"):
    def take() -> list[str] | None:
        try:
            return q.get_nowait()
        except queue.Empty:
            return None
    return take


def filled(sizes: list[int]) -> "queue.Queue[list[str]]":
    q: queue.Queue[list[str]] = queue.Queue()
    for n, size in enumerate(sizes):
        q.put([f"r{n}"] * size)
    return q


class StepClock:
    """A clock that moves ``step`` seconds each time it is read."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


GRID = list(itertools.product([0, 1, 5, 40], [1, 3], [1, 8, 64]))


@pytest.mark.parametrize(("waiting", "rows_each", "max_rows"), GRID)
def test_takes_what_waits_until_the_row_cap(waiting: int, rows_each: int, max_rows: int) -> None:
    # given `waiting` requests of `rows_each` rows in a queue, and a deadline far away
    q = filled([rows_each] * waiting)

    # when a first request gathers company
    got = gather(["first"], taker(q), len, max_rows=max_rows, max_wait_s=60)

    # then it takes requests in order until the cap is reached or the queue is empty, overshooting by less than one
    rows = sum(map(len, got))
    assert got[0] == ["first"] and got[1:] == [[f"r{n}"] * rows_each for n in range(len(got) - 1)]
    if len(got) - 1 < waiting:
        assert max_rows <= rows < max_rows + rows_each
    else:
        assert rows == 1 + waiting * rows_each
    assert q.qsize() == waiting - (len(got) - 1)


@pytest.mark.parametrize(("step", "max_wait_s", "expected_taken"), [
    (0.001, 0.0, 0),     # no wait allowed: only the first request
    (0.001, 0.0035, 3),  # deadline read at 1 ms + 3.5 ms; reads at 2, 3 and 4 ms fall before it
    (0.01, 0.005, 0),    # a slow clock: already past the deadline at the first check
    (0.001, 1.0, 30),    # deadline far off: everything waiting (30) is taken
])
def test_the_deadline_cuts_off_a_steady_stream(step: float, max_wait_s: float, expected_taken: int) -> None:
    # given 30 one-row requests waiting, a high row cap, and a clock that moves `step` per read
    q = filled([1] * 30)

    # when gathering with a `max_wait_s` window
    got = gather(["first"], taker(q), len, max_rows=1000, max_wait_s=max_wait_s, clock=StepClock(step))

    # then exactly the requests taken before the deadline come back
    assert len(got) - 1 == expected_taken


def test_a_lone_request_does_not_wait_for_the_window() -> None:
    # given an empty queue and a 5-second window
    q: queue.Queue[list[str]] = queue.Queue()

    # when a request gathers, on the real clock
    started = time.monotonic()
    got = gather(["alone"], taker(q), len, max_rows=64, max_wait_s=5.0)

    # then it comes back alone, long before the window closes
    assert got == [["alone"]] and time.monotonic() - started < 1.0


def test_it_stops_when_the_queue_runs_dry_and_later_requests_wait_for_the_next_gathering() -> None:
    # given three requests waiting and a long window
    q = filled([1] * 3)

    # when a request gathers, and another arrives after it returned
    got = gather(["first"], taker(q), len, max_rows=64, max_wait_s=5.0)
    q.put(["late"])

    # then it took the three without waiting for more, and the late one is left for the next gathering
    assert got == [["first"], ["r0"], ["r1"], ["r2"]]
    assert gather(["next"], taker(q), len, max_rows=64, max_wait_s=5.0) == [["next"], ["late"]]
