"""Tiny real models for every task beyond the two of ``tiny_models``, plus images and audio to feed them.

Same recipe as ``tiny_models``: the BPE tokenizer trained on ``pydoc_data.topics``, small configs of
real architectures, random weights under a fixed seed, ``save_pretrained`` to a folder. Weights are
drawn wide (``initializer_range`` 0.5-1.0) so that outputs vary between rows and greedy argmax
margins are large: a row's generated text must not depend on the padding of the batch it ran in.
"""

from __future__ import annotations

import io
import json
import math
import wave
from pathlib import Path

import datasets
import numpy as np
import torch
from PIL import Image
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    BertForMaskedLM,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessorPil,
    Wav2Vec2Config,
    Wav2Vec2CTCTokenizer,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2ForCTC,
    Wav2Vec2Processor,
)

from tests.tiny_models import _config, _make_tokenizer, _save, seeded

__all__ = ["audio_dataset", "build_causal_lm", "build_image_classifier", "build_masked_lm", "build_nli_classifier",
           "build_qa", "build_seq2seq", "build_speech_ctc", "build_token_classifier", "image_dataset",
           "png_bytes", "wav_bytes"]

NER_LABELS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
NLI_LABELS = ("contradiction", "neutral", "entailment")
IMAGE_LABELS = ("cat", "dog", "bird")
# A minimal chat template: one line per message, then the assistant's turn when asked for it.
CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<assistant>{% endif %}")


def _labels(names: tuple[str, ...]) -> dict[str, object]:
    return {"num_labels": len(names), "id2label": dict(enumerate(names)),
            "label2id": {n: i for i, n in enumerate(names)}}


def build_token_classifier(path: Path) -> Path:
    """BERT with a token-classification head over O / B-PER / I-PER / B-LOC / I-LOC."""
    tok = _make_tokenizer()
    model = seeded(lambda: BertForTokenClassification(_config(tok, initializer_range=1.0, **_labels(NER_LABELS))))
    return _save(model, tok, path)


def build_nli_classifier(path: Path) -> Path:
    """BERT with a three-way NLI head (contradiction / neutral / entailment), for zero-shot."""
    tok = _make_tokenizer()
    model = seeded(lambda: BertForSequenceClassification(_config(tok, initializer_range=1.0, **_labels(NLI_LABELS))))
    return _save(model, tok, path)


def build_masked_lm(path: Path) -> Path:
    """BERT with a masked-LM head; the tokenizer's mask token is ``[MASK]``."""
    tok = _make_tokenizer()
    return _save(seeded(lambda: BertForMaskedLM(_config(tok, initializer_range=0.5))), tok, path)


def build_qa(path: Path) -> Path:
    """BERT with an extractive question-answering head (the tokenizer encodes question/context pairs)."""
    tok = _make_tokenizer()
    return _save(seeded(lambda: BertForQuestionAnswering(_config(tok, initializer_range=0.5))), tok, path)


def generation_tokenizer() -> PreTrainedTokenizerFast:
    """The small trained tokenizer with [CLS] as its start and [SEP] as its end token, for generation models."""
    tok = _make_tokenizer()
    tok.bos_token, tok.eos_token = "[CLS]", "[SEP]"
    return tok


def build_causal_lm(path: Path) -> Path:
    """A two-layer GPT-2 with a chat template; its tokenizer pads on the left."""
    tok = generation_tokenizer()
    tok.padding_side = "left"
    tok.chat_template = CHAT_TEMPLATE
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    config = GPT2Config(vocab_size=len(tok), n_positions=512, n_embd=32, n_layer=2, n_head=2,
                        initializer_range=0.5, **ids)
    model = seeded(lambda: GPT2LMHeadModel(config))
    model.generation_config = GenerationConfig(**ids)
    return _save(model, tok, path)


def build_seq2seq(path: Path) -> Path:
    """A one-layer BART encoder-decoder for summarization, translation and text2text-generation."""
    tok = generation_tokenizer()
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id,
           "decoder_start_token_id": tok.bos_token_id}
    config = BartConfig(vocab_size=len(tok), max_position_embeddings=512, d_model=32, encoder_layers=1,
                        decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=37,
                        decoder_ffn_dim=37, init_std=0.5, forced_bos_token_id=None, forced_eos_token_id=None, **ids)
    model = seeded(lambda: BartForConditionalGeneration(config))
    model.generation_config = GenerationConfig(**ids)
    return _save(model, tok, path)


def build_image_classifier(path: Path) -> Path:
    """A two-layer ViT over 32x32 images (cat / dog / bird) with a PIL image processor (no torchvision)."""
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=37, initializer_range=1.0, **_labels(IMAGE_LABELS))
    seeded(lambda: ViTForImageClassification(config)).save_pretrained(path)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def build_speech_ctc(path: Path) -> Path:
    """A two-layer wav2vec2 CTC model over a character vocabulary, with its 16 kHz feature extractor."""
    path.mkdir(parents=True, exist_ok=True)
    vocab = {"<pad>": 0, "<unk>": 1, "|": 2, **{c: i + 3 for i, c in enumerate("abcdefghijklmnopqrstuvwxyz'")}}
    (path / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = Wav2Vec2CTCTokenizer(str(path / "vocab.json"), unk_token="<unk>", pad_token="<pad>",
                                     word_delimiter_token="|")
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16_000, padding_value=0.0, do_normalize=True,
                                         return_attention_mask=True)
    config = Wav2Vec2Config(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=37, conv_dim=(32, 32), conv_kernel=(10, 3), conv_stride=(5, 2),
                            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, pad_token_id=0,
                            initializer_range=1.0, feat_extract_norm="layer", do_stable_layer_norm=True)
    model = seeded(lambda: Wav2Vec2ForCTC(config))
    with torch.no_grad():
        # Wide output margins: padding a batch moves logits by ~1e-4, which must not flip a character.
        model.lm_head.weight.mul_(50)
    model.save_pretrained(path)
    Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(path)
    return path


def png_bytes(seed: int, size: tuple[int, int] = (40, 30)) -> bytes:
    """A random-noise RGB PNG, different for each seed."""
    pixels = (np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def image_dataset(path: Path, n: int) -> Path:
    """A saved dataset of ``n`` different images in an Image column, with a ``label`` column."""
    rows = {"image": [{"bytes": png_bytes(i, (24 + i % 17, 20 + i % 13)), "path": f"{i}.png"} for i in range(n)],
            "label": [i % len(IMAGE_LABELS) for i in range(n)]}
    ds = datasets.Dataset.from_dict(rows)
    ds.cast(datasets.Features({"image": datasets.Image(), "label": ds.features["label"]})).save_to_disk(path)
    return path


def wav_bytes(seed: int, seconds: float = 0.5, sampling_rate: int = 16_000) -> bytes:
    """Mixed sine tones plus noise as 16-bit mono PCM WAV, different for each seed."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sampling_rate)) / sampling_rate
    signal = sum(np.sin(2 * math.pi * f * t) for f in rng.uniform(100, 3000, size=3)) / 3
    signal = 0.6 * signal + 0.1 * rng.standard_normal(t.size)
    out = io.BytesIO()
    with wave.open(out, "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sampling_rate)
        f.writeframes((np.clip(signal, -1, 1) * 32767).astype("<i2").tobytes())
    return out.getvalue()


def audio_dataset(path: Path, n: int, sampling_rate: int = 16_000) -> Path:
    """A saved dataset of ``n`` WAV clips of different lengths in an Audio column.

    Built by casting ``{"bytes", "path"}`` structs to ``Audio``, which needs no audio codec (encoding
    decoded arrays would need ``torchcodec``).
    """
    clips = [{"bytes": wav_bytes(i, 0.25 + 0.05 * i, sampling_rate), "path": f"{i}.wav"} for i in range(n)]
    ds = datasets.Dataset.from_dict({"audio": clips})
    ds.cast(datasets.Features({"audio": datasets.Audio(sampling_rate=sampling_rate)})).save_to_disk(path)
    return path


def without_chat_template(model: Path, copy: Path) -> Path:
    """A copy of ``model`` whose tokenizer has no chat template (wherever the tokenizer keeps it)."""
    import json
    import shutil

    shutil.copytree(model, copy)
    (copy / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((copy / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (copy / "tokenizer_config.json").write_text(json.dumps(config))
    return copy
