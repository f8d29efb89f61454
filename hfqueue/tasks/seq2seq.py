"""summarization, translation, text2text-generation: an encoder-decoder model's ``generate``.

transformers 5 removed these pipelines; they are the same loop: optional task prefix (T5's
``"summarize: "``), tokenize, generate, decode. The prefix defaults to the one the model's config
declares for the task (``task_specific_params``), as the old pipelines did. Translation with a
multilingual model (mBART, NLLB, M2M100) takes ``src_lang``/``tgt_lang`` language codes; with T5 the
pair selects the config's ``translation_{src}_to_{tgt}`` prefix; a one-pair model (Marian) needs neither.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel

from hfqueue.errors import ModelLoadError
from hfqueue.tasks.base import LoadedModel, Task
from hfqueue.tasks.generation import GenerationOptions, generate, room_problem
from hfqueue.tasks.limits import TokenLimit

if TYPE_CHECKING:
    import pyarrow as pa


class Seq2SeqOptions(GenerationOptions):
    """Generation options, plus ``prefix`` (prepended to every row; default: the model's own for the task)."""

    prefix: str | None = None


class TranslationOptions(Seq2SeqOptions):
    """Seq2seq options, plus ``src_lang`` and ``tgt_lang`` (language codes of multilingual models, or the
    language names of a T5 ``translation_{src}_to_{tgt}`` prefix)."""

    src_lang: str | None = None
    tgt_lang: str | None = None


class Seq2SeqTask(Task):
    """Base of the encoder-decoder generation tasks; ``output_column`` names the text column."""

    name = "text2text-generation"
    output_column: ClassVar[str] = "generated_text"
    Options: ClassVar[type[BaseModel]] = Seq2SeqOptions
    model_class = "AutoModelForSeq2SeqLM"
    heads = ("MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES",)
    default_model = ("google-t5/t5-base", "a9723ea")

    def output_types(self, options: dict[str, Any]) -> "dict[str, pa.DataType]":
        import pyarrow as pa

        return {self.output_column: pa.string()}

    def task_params(self, loaded: LoadedModel, options: dict[str, Any]) -> dict[str, Any]:
        """The model config's ``task_specific_params`` entry for this task, if any."""
        params = getattr(loaded.model.config, "task_specific_params", None) or {}
        return dict(params.get(self.name) or {})

    def prefix(self, loaded: LoadedModel, options: dict[str, Any]) -> str:
        """The text put before every row: the option, else the model's own for the task, else nothing."""
        if options["prefix"] is not None:
            return options["prefix"]
        return str(self.task_params(loaded, options).get("prefix", ""))

    def generate_extra(self, loaded: LoadedModel, options: dict[str, Any]) -> dict[str, Any]:
        """Task-specific ``generate`` arguments (translation forces the target language's first token)."""
        return {}

    def options_problem(self, model: str, revision: str | None, config: dict[str, Any],
                        options: dict[str, Any]) -> str | None:
        return room_problem(config, options)

    def prepare(self, loaded: LoadedModel, rows: list[Any], options: dict[str, Any], limit: TokenLimit) -> list[Any]:
        # Options differ between jobs that share the loaded model: derive everything per call.
        prefix = self.prefix(loaded, options)
        self.generate_extra(loaded, options)  # fails the job now when the options do not fit the model
        return super().prepare(loaded, [prefix + row for row in rows], options, limit)

    def forward(self, loaded: LoadedModel, batch: dict[str, Any], options: dict[str, Any]) -> list[dict[str, Any]]:
        out = generate(loaded, batch, options, **self.generate_extra(loaded, options))
        texts = loaded.tokenizer.batch_decode(out, skip_special_tokens=True)
        return [{self.output_column: t.strip()} for t in texts]


class Summarization(Seq2SeqTask):
    """Output column ``summary_text``."""

    name = "summarization"
    output_column = "summary_text"
    default_model = ("sshleifer/distilbart-cnn-12-6", "a4f8f3e")


class Translation(Seq2SeqTask):
    """Output column ``translation_text``."""

    name = "translation"
    output_column = "translation_text"
    Options: ClassVar[type[BaseModel]] = TranslationOptions

    def task_params(self, loaded: LoadedModel, options: dict[str, Any]) -> dict[str, Any]:
        params = getattr(loaded.model.config, "task_specific_params", None) or {}
        return dict(params.get(f"translation_{options['src_lang']}_to_{options['tgt_lang']}") or {})

    def generate_extra(self, loaded: LoadedModel, options: dict[str, Any]) -> dict[str, Any]:
        tokenizer, src, tgt = loaded.tokenizer, options["src_lang"], options["tgt_lang"]
        if tgt is None:
            return {}
        codes = tokenizer.get_added_vocab()  # multilingual tokenizers add their language codes as tokens
        if tgt in codes:
            if src is not None and hasattr(tokenizer, "src_lang"):
                tokenizer.src_lang = src  # the tokenizer prepends the source code; reset per call
            return {"forced_bos_token_id": codes[tgt]}
        if not self.prefix(loaded, options):
            raise ModelLoadError(
                f"translation to {tgt!r}: the model has no language code {tgt!r} and no prefix for "
                f"translation_{src}_to_{tgt}; give options.prefix (e.g. 'translate English to German: ') "
                "or use the model's language codes", value=tgt)
        return {}


class Text2TextGeneration(Seq2SeqTask):
    """Output column ``generated_text``."""
