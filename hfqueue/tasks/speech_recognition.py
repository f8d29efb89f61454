"""automatic-speech-recognition: the transcript of each audio row (CTC models such as wav2vec2, or Whisper).

CTC models run here directly: the batch is padded, and each row's transcript is decoded from its own
frames only. (The pipeline, batched, also decodes the padded frames at the end of shorter clips.)
Encoder-decoder models (Whisper pads every clip to 30 s anyway) and long audio cut into windows
(``chunk_length_s``) go through the pipeline.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from hfqueue.tasks.base import LoadedModel
from hfqueue.tasks.limits import TokenLimit
from hfqueue.tasks.identity import media_identity
from hfqueue.tasks.media import decode_audio, media_problem
from hfqueue.tasks.pipeline_task import PipelineTask

if TYPE_CHECKING:
    import pyarrow as pa

_SAMPLES_PER_TOKEN = 160  # 10 ms at 16 kHz, the frame rate of most speech feature extractors


class SpeechRecognitionOptions(BaseModel):
    """``chunk_length_s``: transcribe long audio in windows of this many seconds (None: whole file at once)."""

    model_config = ConfigDict(extra="forbid")
    chunk_length_s: float | None = Field(None, gt=0)


class SpeechRecognition(PipelineTask):
    """Output column ``text``. Rows are an Audio column of a dataset, or audio file paths (wav, flac, ogg,
    mp3: whatever libsndfile reads), resampled to the model's rate."""

    name = "automatic-speech-recognition"
    aliases = ("asr", "speech-recognition")
    pipeline_task = "automatic-speech-recognition"
    fields = ("audio",)
    echo_inputs = False
    Options: ClassVar[type[BaseModel]] = SpeechRecognitionOptions
    model_class = "AutoModelForCTC"
    heads = ("MODEL_FOR_CTC_MAPPING_NAMES", "MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES")
    default_model = ("facebook/wav2vec2-base-960h", "22aad52")

    def row_problem(self, row: Any) -> str | None:
        return media_problem(row, "audio")

    def row_identity(self, row: Any) -> bytes | None:
        return media_identity(row)  # a path is keyed by the file's contents

    def output_types(self, options: dict[str, Any]) -> "dict[str, pa.DataType]":
        import pyarrow as pa

        return {"text": pa.string()}

    def auto_class(self, config: Any) -> str:
        # Whisper-style encoder-decoders load with their own auto class; CTC models (wav2vec2) with CTC.
        from transformers.models.auto import modeling_auto

        if config.model_type in modeling_auto.MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES:
            return "AutoModelForSpeechSeq2Seq"
        return self.model_class

    def load_processor(self, model: str, *, revision: str | None, trust_remote_code: bool) -> Any:
        import transformers

        return transformers.AutoProcessor.from_pretrained(model, revision=revision,
                                                          trust_remote_code=trust_remote_code)

    def components(self, loaded: LoadedModel) -> dict[str, Any]:
        processor = loaded.tokenizer
        return {"tokenizer": processor.tokenizer, "feature_extractor": processor.feature_extractor}

    def prepare(self, loaded: LoadedModel, rows: list[Any], options: dict[str, Any], limit: TokenLimit) -> list[Any]:
        rate = loaded.tokenizer.feature_extractor.sampling_rate
        features = []
        for row in rows:
            samples = decode_audio(row, rate)
            features.append({"input": {"raw": samples, "sampling_rate": rate},
                             "length": max(1, len(samples) * 16_000 // rate // _SAMPLES_PER_TOKEN)})
        return features

    def forward(self, loaded: LoadedModel, batch: Any, options: dict[str, Any]) -> list[dict[str, Any]]:
        if options["chunk_length_s"] or loaded.model.config.is_encoder_decoder:
            return super().forward(loaded, batch, options)
        import torch

        extractor, model = loaded.tokenizer.feature_extractor, loaded.model
        clips = [row["raw"] for row in batch]
        enc = extractor(clips, sampling_rate=extractor.sampling_rate, padding=True, return_tensors="pt")
        # The waveforms come as float32: in the model's own precision (float16, bfloat16), or its first layer refuses
        # them, as the pipeline casts them too; the attention mask stays integer.
        inputs = {k: v.to(loaded.device, dtype=model.dtype) if v.is_floating_point() else v.to(loaded.device)
                  for k, v in enc.items()}
        with torch.inference_mode():
            logits = model(**inputs).logits
        frames = model._get_feat_extract_output_lengths(torch.tensor([len(c) for c in clips])).tolist()
        ids = logits.argmax(-1).cpu()
        return [{"text": loaded.tokenizer.tokenizer.decode(ids[i, :n]).strip()} for i, n in enumerate(frames)]

    def call_kwargs(self, loaded: LoadedModel, options: dict[str, Any]) -> dict[str, Any]:
        return {"chunk_length_s": options["chunk_length_s"]} if options["chunk_length_s"] else {}

    def shape(self, output: Any, options: dict[str, Any]) -> dict[str, Any]:
        return {"text": output["text"].strip()}
