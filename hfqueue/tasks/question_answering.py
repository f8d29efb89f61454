"""question-answering (extractive): the span of the context that answers the question.

transformers 5 removed this pipeline; the algorithm is the one it used. A context longer than
``max_seq_len`` is cut into overlapping windows (``doc_stride`` tokens shared between neighbours);
each window scores every (start, end) token pair inside the context as p(start) x p(end), with the
answer at most ``max_answer_len`` tokens long, and the row keeps the best pair over its windows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hfqueue.tasks.base import LoadedModel, Task
from hfqueue.tasks.limits import TokenLimit

if TYPE_CHECKING:
    import pyarrow as pa


class QuestionAnsweringOptions(BaseModel):
    """``max_answer_len`` (tokens), ``max_seq_len`` (tokens per window), ``doc_stride`` (overlap of windows),
    ``handle_impossible_answer`` (allow the empty answer when the model rates "no answer" highest)."""

    model_config = ConfigDict(extra="forbid")
    max_answer_len: int = Field(15, ge=1)
    max_seq_len: int = Field(384, ge=32)
    doc_stride: int = Field(128, ge=0)
    handle_impossible_answer: bool = False

    @model_validator(mode="after")
    def _stride_fits(self) -> "QuestionAnsweringOptions":
        if self.doc_stride >= self.max_seq_len // 2:
            raise ValueError(f"doc_stride ({self.doc_stride}) must be under half of max_seq_len ({self.max_seq_len})")
        return self


class QuestionAnswering(Task):
    """Output columns ``answer`` (str), ``score`` (float), ``start`` and ``end`` (character offsets in the context)."""

    name = "question-answering"
    aliases = ("extractive-question-answering",)
    fields = ("question", "context")
    Options: ClassVar[type[BaseModel]] = QuestionAnsweringOptions
    model_class = "AutoModelForQuestionAnswering"
    heads = ("MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES",)
    default_model = ("distilbert/distilbert-base-cased-distilled-squad", "564e9b5")

    def row_problem(self, row: Any) -> str | None:
        problem = super().row_problem(row)
        if problem is None and not all(isinstance(row[f], str) and row[f].strip() for f in self.fields):
            problem = "question and context must be non-empty strings"
        return problem

    def output_types(self, options: dict[str, Any]) -> "dict[str, pa.DataType]":
        import pyarrow as pa

        return {"answer": pa.string(), "score": pa.float64(), "start": pa.int64(), "end": pa.int64()}

    def prepare(self, loaded: LoadedModel, rows: list[Any], options: dict[str, Any], limit: TokenLimit) -> list[Any]:
        # Long contexts are read in overlapping windows, never cut: the limit only bounds a window.
        seq_len = min(options["max_seq_len"], limit.tokens)
        features = []
        for row in rows:
            problem = self.row_problem(row)
            if problem:
                raise ValueError(problem)
            question = row["question"].lstrip()
            # Windows share `stride` tokens; it must leave room for new context in each window.
            room = seq_len - len(loaded.tokenizer(question)["input_ids"]) - 1
            if room < 8:
                raise ValueError(f"the question leaves {room} tokens of a {seq_len}-token window for the context; "
                                 "shorten it or raise max_seq_len")
            enc = loaded.tokenizer(question, row["context"], truncation="only_second",
                                   max_length=seq_len, stride=min(options["doc_stride"], room // 2),
                                   return_overflowing_tokens=True, return_offsets_mapping=True)
            model_keys = [k for k in enc.keys() if k not in ("offset_mapping", "overflow_to_sample_mapping")]
            windows = [{"inputs": {k: enc[k][i] for k in model_keys}, "offsets": enc["offset_mapping"][i],
                        "in_context": [s == 1 for s in enc.sequence_ids(i)]} for i in range(len(enc["input_ids"]))]
            features.append({"windows": windows, "context": row["context"]})
        return features

    def length(self, feature: Any) -> int:
        return sum(len(w["inputs"]["input_ids"]) for w in feature["windows"])

    def collate(self, loaded: LoadedModel, features: list[Any]) -> Any:
        flat = [w["inputs"] for f in features for w in f["windows"]]
        tensors = loaded.tokenizer.pad(flat, return_tensors="pt")
        return {"tensors": {k: v.to(loaded.device) for k, v in tensors.items()}, "features": features}

    def forward(self, loaded: LoadedModel, batch: Any, options: dict[str, Any]) -> list[dict[str, Any]]:
        import torch

        with torch.inference_mode():
            out = loaded.model(**batch["tensors"])
        starts, ends = out.start_logits.float().cpu(), out.end_logits.float().cpu()
        results, k = [], 0
        for feature in batch["features"]:
            best: dict[str, Any] = {"answer": "", "score": -1.0, "start": 0, "end": 0}
            null_score = 0.0
            for window in feature["windows"]:
                found, window_null = _best_span(starts[k], ends[k], window, options)
                k += 1
                null_score = max(null_score, window_null)
                if found["score"] > best["score"]:
                    best = {**found, "answer": feature["context"][found["start"]:found["end"]]}
            if options["handle_impossible_answer"] and null_score > best["score"]:
                best = {"answer": "", "score": null_score, "start": 0, "end": 0}
            results.append(best)
        return results


def _best_span(start_logits: Any, end_logits: Any, window: dict[str, Any], options: dict[str, Any]
               ) -> tuple[dict[str, Any], float]:
    """The best (start, end) of one window as character offsets with its score, and the window's null score."""
    import torch

    width = start_logits.shape[0]
    allowed = torch.zeros(width, dtype=torch.bool)
    allowed[:len(window["in_context"])] = torch.tensor(window["in_context"])
    if options["handle_impossible_answer"]:
        allowed[0] = True  # the first token stands for "no answer"
    start = start_logits.masked_fill(~allowed, -10000.0).softmax(-1)
    end = end_logits.masked_fill(~allowed, -10000.0).softmax(-1)
    null_score = 0.0
    if options["handle_impossible_answer"]:
        null_score = float(start[0] * end[0])
        start[0] = end[0] = 0.0  # scored as "no answer" above; never the edge of a span
    # p(start) x p(end) for every pair with start <= end < start + max_answer_len.
    pairs = torch.triu(torch.tril(start[:, None] * end[None, :], options["max_answer_len"] - 1))
    index = int(pairs.argmax())
    s, e = divmod(index, width)
    offsets = window["offsets"]
    return {"score": float(pairs.flatten()[index]), "start": int(offsets[s][0]), "end": int(offsets[e][1])}, null_score
