"""hfqueue inside LangChain: embeddings and a chat model that run on hfqueue's workers (``pip install hfqueue[langchain]``).

- :class:`HfqueueEmbeddings`: ``embed_documents`` runs a feature-extraction job (a list of at most
  ``HFQ_SMALL_JOB_ROWS`` texts rides the request lane, a longer one is a chunked job, with a progress bar when
  ``progress=True``); ``embed_query`` is one ``client.infer`` request. The vectors are the job's for the same model
  and options.
- :class:`ChatHfqueue`: a chat model over ``client.infer`` for text-generation: the messages go through the model's
  chat template; ``max_tokens``, ``stop`` strings, ``temperature`` and ``seed`` map to the task's options. Workers
  answer a request whole, so streaming yields the answer as one chunk.

A failed row raises :class:`hfqueue.HfqError` naming the row and its reason. The async methods run the blocking
wait in a thread, as ``client.ainfer`` does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.embeddings import Embeddings
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from hfqueue.client import Client
from hfqueue.errors import HfqError, WaitTimeoutError

_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}


class _Queued(BaseModel):
    """What both classes share: the model, its options, and the client they submit through."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model: str = Field(description="Hub model id or local folder, as a job names it.")
    client: Any = Field(default=None, exclude=True, description="An hfqueue.Client; default: one from HFQ_*.")
    timeout: float = Field(default=600.0, gt=0, description="Seconds to wait for an answer.")
    max_retries: int = Field(default=0, ge=0, description="Times a request is sent again when no worker answered it "
                             "within the timeout (one no worker took is taken back first).")
    _own: Client | None = PrivateAttr(default=None)

    def _client(self) -> Client:
        if self.client is not None:
            return self.client  # type: ignore[no-any-return]
        if self._own is None:
            self._own = Client()
        return self._own

    def _infer(self, task: str, rows: list[Any], options: dict[str, Any], **fields: Any) -> list[dict[str, Any]]:
        for attempt in range(self.max_retries + 1):
            try:
                return self._client().infer(task, rows, self.model, options=options, timeout=self.timeout, **fields)
            except WaitTimeoutError:
                if attempt == self.max_retries:
                    raise
        raise AssertionError("unreachable")


class HfqueueEmbeddings(_Queued, Embeddings):
    """LangChain embeddings computed by hfqueue's workers (task feature-extraction).

    >>> HfqueueEmbeddings(model="sentence-transformers/all-MiniLM-L6-v2", options={"normalize": True})  # doctest: +SKIP
    """

    options: dict[str, Any] = Field(default_factory=dict, description="feature-extraction options (pooling, ...).")
    progress: bool = Field(default=False, description="Show a progress bar while a long list runs as a job.")
    chunk_size: int | None = Field(default=None, gt=0, description="Rows per chunk of a long list's job.")
    truncate: bool = Field(default=True, description="Cut a text longer than the model takes (false: it fails).")

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """One vector per text, in order: a job through the queue (small lists ride the request lane)."""
        if not texts:
            return []
        job = self._client().submit(task="feature-extraction", model=self.model, inputs=list(texts),
                                    options=self.options, chunk_size=self.chunk_size, truncate=self.truncate)
        status = job.wait(timeout=self.timeout, progress=self.progress)
        if status.rows_failed:
            first = min(job.errors().to_list(), key=lambda row: row["row_idx"])
            raise HfqError(f"{status.rows_failed} of {len(texts)} texts failed; text {first['row_idx']}: "
                           f"{first['error_type']}: {first['error']}", value=job.id)
        column = job.result(timeout=self.timeout).with_format("arrow")["embedding"].combine_chunks()
        return [[float(x) for x in row] for row in column.to_pylist()]

    def embed_query(self, text: str) -> list[float]:
        """The vector of one text, through ``client.infer`` (no job, no files)."""
        [out] = self._infer("feature-extraction", [text], self.options, truncate=self.truncate)
        return [float(x) for x in out["embedding"]]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """:meth:`embed_documents` for asyncio code."""
        return await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        """:meth:`embed_query` for asyncio code."""
        return await asyncio.to_thread(self.embed_query, text)


class ChatHfqueue(_Queued, BaseChatModel):
    """A LangChain chat model answered by hfqueue's workers (task text-generation, the model's chat template)."""

    max_tokens: int | None = Field(default=None, gt=0, description="Most new tokens (default: the task's 256).")
    temperature: float | None = Field(default=None, ge=0, description="Sampling temperature; 0 or None: greedy.")
    seed: int | None = Field(default=None, ge=0, description="Seeds sampling, so a rerun gives the same text.")
    stop: list[str] | None = Field(default=None, description="Strings that end the text (cut before them).")

    @property
    def _llm_type(self) -> str:
        return "hfqueue"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model, "max_tokens": self.max_tokens, "temperature": self.temperature}

    def _options(self, stop: Sequence[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        options: dict[str, Any] = {}
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        if max_tokens is not None:
            options["max_new_tokens"] = max_tokens
        temperature = kwargs.get("temperature", self.temperature)
        if temperature:
            options.update(do_sample=True, temperature=temperature)
            seed = kwargs.get("seed", self.seed)
            if seed is not None:
                options["seed"] = seed
        stops = list(stop if stop is not None else self.stop or [])
        if stops:
            options["stop"] = stops
        return options

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        rows = [[{"role": _ROLES.get(m.type, m.type), "content": m.text} for m in messages]]
        [out] = self._infer("text-generation", rows, self._options(stop, kwargs))
        usage = UsageMetadata(input_tokens=out["prompt_tokens"], output_tokens=out["completion_tokens"],
                              total_tokens=out["prompt_tokens"] + out["completion_tokens"])
        message = AIMessage(content=out["generated_text"], usage_metadata=usage,
                            response_metadata={"model_name": self.model, "finish_reason": out["finish_reason"]})
        return ChatResult(generations=[ChatGeneration(message=message,
                                                      generation_info={"finish_reason": out["finish_reason"]})])

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        return await asyncio.to_thread(self._generate, messages, stop, None, **kwargs)

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        yield _whole(self._generate(messages, stop, None, **kwargs), run_manager)

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        result = await asyncio.to_thread(self._generate, messages, stop, None, **kwargs)
        chunk = _whole(result, None)
        if run_manager is not None:
            await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
        yield chunk


def _whole(result: ChatResult, run_manager: CallbackManagerForLLMRun | None) -> ChatGenerationChunk:
    """The whole answer as the one and last chunk of a stream."""
    message = result.generations[0].message
    chunk = ChatGenerationChunk(message=AIMessageChunk(
        content=message.content, usage_metadata=getattr(message, "usage_metadata", None),
        response_metadata=message.response_metadata, chunk_position="last"))
    if run_manager is not None:
        run_manager.on_llm_new_token(chunk.text, chunk=chunk)
    return chunk
