"""The runner on its own: order restored, bad rows isolated by halving, job-level errors raised.

The task here is a plain function over strings, not a model: what is under test is the runner's
bookkeeping, which is the same whatever the model is.
"""

from __future__ import annotations

import weakref
from typing import Any

import pytest
import torch

from hfqueue.errors import ModelLoadError
from hfqueue.tasks.base import LoadedModel, Task
from hfqueue.worker.batching import TokenBudget
from hfqueue.worker.runner import BatchStopped, infer_rows

pytestmark = pytest.mark.timeout(10)


@pytest.fixture(autouse=True)
def no_collection(monkeypatch: pytest.MonkeyPatch) -> None:
    """The out-of-memory path frees device memory with gc.collect(), which in this process would also finalize what
    earlier tests left behind (an unclosed socket's ResourceWarning is an error under the suite's filterwarnings):
    on the CPU there is no device memory to give back, so nothing is collected here."""
    monkeypatch.setattr("hfqueue.worker.runner.free_device_memory", lambda device: None)


class Upper(Task):
    """Upper-cases rows; a batch holding "bad" raises, a row "unpreparable" cannot be prepared."""

    name = "upper"

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def prepare(self, loaded: LoadedModel, rows: list[Any], options: dict[str, Any], max_length: int) -> list[Any]:
        if "unpreparable" in rows:
            raise ValueError("cannot prepare")
        if "unfit" in rows:
            raise ModelLoadError("the model does not fit")
        return [{"input_ids": list(row), "row": row} for row in rows]

    def collate(self, loaded: LoadedModel, features: list[Any]) -> Any:
        return [f["row"] for f in features]

    def forward(self, loaded: LoadedModel, batch: Any, options: dict[str, Any]) -> list[dict[str, Any]]:
        self.batches.append(batch)
        if "bad" in batch:
            raise RuntimeError("bad row in batch")
        return [{"out": row.upper()} for row in batch]


LOADED = LoadedModel(model=None, tokenizer=None, device="cpu", revision=None)


def run(task: Upper, rows: list[str], **kwargs: Any) -> Any:
    return infer_rows(task, kwargs.pop("loaded", LOADED), rows, {}, max_batch_size=4, max_batch_tokens=1000, max_length=64, **kwargs)


def test_outputs_come_back_in_input_order_across_length_sorted_batches() -> None:
    # given rows of very different lengths, when they run in batches of 4
    rows = ["a" * n for n in (3, 30, 1, 12, 7, 25, 2, 9, 18)]
    result = run(Upper(), rows)

    # then each output is its own row's, in input order, and nothing failed
    assert [o["out"] for o in result.outputs] == [r.upper() for r in rows] and result.errors == {}


def test_a_failing_row_is_isolated_and_the_rest_of_its_batch_succeeds() -> None:
    # given nine rows, one of which makes its batch raise
    rows = [f"row{i}" for i in range(9)]
    rows[5] = "bad"
    task = Upper()

    # when they run
    result = run(task, rows)

    # then only that row failed, with the error, and every other row has its output
    assert result.errors == {5: ("RuntimeError", "bad row in batch")}
    assert [o and o["out"] for o in result.outputs] == [r.upper() if r != "bad" else None for r in rows]
    assert ["bad"] in task.batches  # it was narrowed down to a batch of its own


def test_a_row_that_cannot_be_prepared_fails_alone() -> None:
    result = run(Upper(), ["one", "unpreparable", "three"])
    assert result.errors == {1: ("ValueError", "cannot prepare")}
    assert [o and o["out"] for o in result.outputs] == ["ONE", None, "THREE"]


def test_a_job_level_error_is_raised_not_filed_as_a_row_error() -> None:
    with pytest.raises(ModelLoadError, match="does not fit"):
        run(Upper(), ["one", "unfit"])


def test_should_stop_stops_at_a_batch_boundary() -> None:
    task = Upper()
    with pytest.raises(BatchStopped):
        run(task, [f"r{i}" for i in range(12)], should_stop=lambda: len(task.batches) >= 1)
    assert len(task.batches) == 1


class OutOfMemoryAbove(Upper):
    """Raises CUDA's out-of-memory error (injected: this runs on CPU) for batches over a padded-token limit."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def forward(self, loaded: LoadedModel, batch: Any, options: dict[str, Any]) -> list[dict[str, Any]]:
        self.batches.append(batch)
        if max(len(r) for r in batch) * len(batch) > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [{"out": row.upper()} for row in batch]


def test_out_of_memory_splits_the_batch_and_shrinks_the_budget_for_later_batches() -> None:
    # given rows of 10 characters, batches of up to 8 (80 tokens), and memory for 30 tokens at once
    task, budget = OutOfMemoryAbove(limit=30), TokenBudget(1000, floor=10)
    rows = [f"row-{i:06d}" for i in range(24)]

    # when they run with a shared budget
    result = infer_rows(task, LOADED, rows, {}, max_batch_size=8, max_batch_tokens=budget, max_length=64)

    # then every row succeeds, the budget dropped to what fits, and after the first failure no batch
    # was planned over it again
    assert result.errors == {} and [o["out"] for o in result.outputs] == [r.upper() for r in rows]
    assert budget.tokens <= 30
    first_fit = next(i for i, b in enumerate(task.batches) if 10 * len(b) <= 30)
    assert all(10 * len(b) <= 40 for b in task.batches[first_fit:])


def test_a_row_too_big_for_memory_alone_fails_with_the_out_of_memory_error() -> None:
    result = infer_rows(OutOfMemoryAbove(limit=5), LOADED, ["short", "far too long"], {}, max_batch_size=8,
                        max_batch_tokens=1000, max_length=64)
    assert list(result.errors) == [1] and result.errors[1][0] == "OutOfMemoryError"
    assert result.outputs[0] == {"out": "SHORT"}


class HoldsActivations(OutOfMemoryAbove):
    """Like OutOfMemoryAbove, but each pass first makes an activation tensor, as a model's forward does before the
    allocation that fails; at the start of every pass it notes how many activations of failed passes are alive."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.failed: list[weakref.ref[torch.Tensor]] = []
        self.alive_at_start: list[int] = []

    def forward(self, loaded: LoadedModel, batch: Any, options: dict[str, Any]) -> list[dict[str, Any]]:
        self.alive_at_start.append(sum(ref() is not None for ref in self.failed))
        activation = torch.empty(len(batch), 1024)
        if max(len(r) for r in batch) * len(batch) > self.limit:
            self.failed.append(weakref.ref(activation))
        return super().forward(loaded, batch, options)


def test_a_pass_that_ran_out_of_memory_has_let_go_of_its_tensors_before_its_halves_run() -> None:
    # given a batch that runs out of memory after its forward pass made an activation (the exception's traceback
    # holds the pass's frames, and they hold it, for as long as the exception lives)
    task = HoldsActivations(limit=30)
    rows = [f"row-{i:06d}" for i in range(8)]

    # when it is split and its halves run
    result = infer_rows(task, LOADED, rows, {}, max_batch_size=8, max_batch_tokens=1000, max_length=64)

    # then every row succeeds, and no pass began while a failed pass's activation was still alive: on a GPU, the
    # halves would otherwise run out of memory beside it
    assert result.errors == {} and len(task.failed) >= 2
    assert task.alive_at_start == [0] * len(task.batches), task.alive_at_start


def test_prefetching_the_next_batch_changes_nothing_in_the_results() -> None:
    # given rows of mixed lengths with a bad one among them
    rows = ["a" * n for n in (3, 30, 1, 12, 7, 25, 2, 9, 18)] + ["bad"]

    # when they run with and without the next batch collated ahead on a helper thread
    plain, ahead = run(Upper(), rows), run(Upper(), rows, prefetch=True)

    # then outputs and errors are the same
    assert ahead.outputs == plain.outputs and ahead.errors == plain.errors == {9: ("RuntimeError", "bad row in batch")}


class Uncollatable(Upper):
    """Collating a batch that holds "nocollate" raises."""

    def collate(self, loaded: LoadedModel, features: list[Any]) -> Any:
        rows = super().collate(loaded, features)
        if "nocollate" in rows:
            raise ValueError("cannot collate")
        return rows


def test_a_batch_that_cannot_be_collated_ahead_still_isolates_its_bad_row() -> None:
    # given a row that breaks collation, when rows run with prefetching
    rows = ["abc", "nocollate", "de", "fghij", "k", "lmnopq"]
    result = run(Uncollatable(), rows, prefetch=True)

    # then only that row fails, with the collation error, and the others get their outputs
    assert result.errors == {1: ("ValueError", "cannot collate")}
    assert [o and o["out"] for o in result.outputs] == ["ABC", None, "DE", "FGHIJ", "K", "LMNOPQ"]


class Overflowing(Upper):
    """Gives NaN for every row when the model runs in bfloat16, as a model whose activations overflow there does."""

    def forward(self, loaded: LoadedModel, batch: Any, options: dict[str, Any]) -> list[dict[str, Any]]:
        self.batches.append(batch)
        nan = loaded.dtype == "bfloat16"
        return [{"out": row.upper(), "score": float("nan") if nan else 1.0} for row in batch]


def test_a_reduced_precision_batch_that_comes_out_nan_runs_again_and_the_rest_follow_on_float32() -> None:
    # given a model in bfloat16 that overflows, and its float32 copy to fall back on
    task, copies = Overflowing(), []
    half = LoadedModel(model=None, tokenizer=None, device="cpu", revision=None, dtype="bfloat16")

    def exact() -> LoadedModel:
        copies.append(LoadedModel(model=None, tokenizer=None, device="cpu", revision=None, dtype="float32"))
        return copies[-1]

    # when 9 rows run in batches of 4
    result = run(task, [f"row {i}" for i in range(9)], loaded=half, exact=exact)
    # then only the first batch ran in bfloat16 (and again), the copy was made once, and no row holds a NaN
    assert len(copies) == 1 and result.exact_batches == 1
    assert len(task.batches) == 3 + 1 and result.errors == {}
    assert all(o is not None and o["score"] == 1.0 for o in result.outputs)


def test_without_a_float32_copy_the_overflowing_rows_fail_saying_why() -> None:
    # given a bfloat16 model that overflows and no float32 copy (a job with a PEFT task)
    half = LoadedModel(model=None, tokenizer=None, device="cpu", revision=None, dtype="bfloat16")
    # when rows run
    result = run(Overflowing(), ["a", "b", "c"], loaded=half)
    # then each fails with the reason and the fix, and none has an output
    assert result.outputs == [None] * 3
    assert {kind for kind, _ in result.errors.values()} == {"NonFiniteOutput"}
    assert "dtype float32" in result.errors[0][1]
