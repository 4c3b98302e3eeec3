"""The tiny offline Qwen2-Audio: the real architecture with random weights, for tests, CI and demos.

Nothing is downloaded. The folder it writes loads with ``Qwen2AudioForConditionalGeneration.from_pretrained``
and ``AutoProcessor.from_pretrained`` like the real ``Qwen/Qwen2-Audio-7B-Instruct``:
- a byte-level BPE tokenizer trained with ``tokenizers`` on ``voiceassist/data/tiny_corpus.txt``, plus the six
  special tokens of Qwen2-Audio, in the real order (``<|endoftext|>`` … ``<|audio_eos|>``, added last);
- the real ``WhisperFeatureExtractor`` settings (128 mel bins, 16 kHz, 10 ms hop, 30 s window);
- the real Qwen2-Audio chat template (system prompt default, audios numbered across the conversation);
- a 2-layer encoder and 2-layer Qwen2 decoder, hidden 128, attention head size 64 (vLLM's CPU build needs
  ≥ 32), seeded weights: building twice gives the same files.

Its replies are noise; every code path (processor, encoder, KV cache, streaming) is real.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from voiceassist.events import SAMPLE_RATE

# Bump when the files written change, so cached copies are rebuilt rather than reused.
TINY_VERSION = 2
SEED = 1234

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>")
# Weight init std. The usual 0.02 makes such a small random model repeat one token whatever it hears; 0.2
# makes its greedy replies depend on the audio, the text and the history, so exactness tests can fail.
INIT_STD = 0.2
BPE_VOCAB = 1024  # target vocabulary before the special tokens (the small corpus may give fewer)

# The chat template of Qwen/Qwen2-Audio-7B-Instruct (hub chat_template, as Qwen2AudioProcessor's default).
CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if 'audio' in content or 'audio_url' in content %}"
    "{% set audio_count.value = audio_count.value + 1 %}"
    "Audio {{ audio_count.value }}: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
    "{% elif 'text' in content %}"
    "{{ content['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "<|im_start|>assistant\n"
    "{% endif %}"
)


def _corpus() -> str:
    return (Path(__file__).resolve().parent.parent / "data" / "tiny_corpus.txt").read_text(encoding="utf-8")


def _train_tokenizer():
    """Byte-level BPE like Qwen2's, trained on the shipped corpus; special tokens appended in the real order."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    text = _corpus()
    tok.train_from_iterator(text.splitlines(), trainer=trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return tok


def build_tiny_processor():
    """The tiny model's processor, in memory: its trained tokenizer, the real feature extractor settings and the
    real chat template. Deterministic (the same tokenizer every build); takes about a second."""
    from transformers import PreTrainedTokenizerFast, Qwen2AudioProcessor, WhisperFeatureExtractor

    raw = _train_tokenizer()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
    )
    feature_extractor = WhisperFeatureExtractor(
        feature_size=128,
        sampling_rate=SAMPLE_RATE,
        hop_length=160,
        chunk_length=30,
        n_fft=400,
        padding_value=0.0,
        return_attention_mask=True,
    )
    return Qwen2AudioProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)


def generation_config_for(tokenizer):
    """The tiny model's generation config (greedy; its end tokens)."""
    from transformers import GenerationConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    return GenerationConfig(
        eos_token_id=[ids["<|endoftext|>"], ids["<|im_end|>"]],
        pad_token_id=ids["<|endoftext|>"],
        bos_token_id=ids["<|endoftext|>"],
        do_sample=False,
    )


def build_tiny_model(dir: Path) -> Path:
    """Write the tiny Qwen2-Audio (config, seeded random weights, tokenizer, feature extractor, chat template)
    to ``dir`` (created if needed) and return it. Takes a few seconds; a few MB on disk."""
    import torch
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    processor = build_tiny_processor()
    tokenizer, feature_extractor = processor.tokenizer, processor.feature_extractor
    ids: dict[str, Any] = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}  # one int id each

    config = Qwen2AudioConfig(  # type: ignore[call-arg]  # initializer_range: through PretrainedConfig's kwargs
        audio_config={
            "model_type": "qwen2_audio_encoder",
            "num_mel_bins": 128,
            "encoder_layers": 2,
            "encoder_attention_heads": 2,
            "encoder_ffn_dim": 256,
            "d_model": 128,  # head size 64
            "max_source_positions": 1500,  # 3000 mel frames → 1500 positions, as the real encoder
            "initializer_range": INIT_STD,
        },
        text_config={
            "model_type": "qwen2",
            "vocab_size": len(tokenizer),
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,  # head size 64
            "max_position_embeddings": 8192,
            "rope_theta": 10000.0,
            "rms_norm_eps": 1e-6,
            "tie_word_embeddings": False,
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
            "initializer_range": INIT_STD,
        },
        audio_token_index=ids["<|AUDIO|>"],
        initializer_range=INIT_STD,
    )
    torch.manual_seed(SEED)
    model = Qwen2AudioForConditionalGeneration(config).eval()
    model.generation_config = generation_config_for(tokenizer)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Writing model shards" bar on the user's terminal
    model.save_pretrained(dir)
    processor.save_pretrained(dir)
    # Older readers (transformers 4.x, as in some vLLM builds) look for preprocessor_config.json and a tokenizer
    # class name they know; transformers 5 reads either.
    feature_extractor.save_pretrained(dir)
    tok_cfg = dir / "tokenizer_config.json"
    data = json.loads(tok_cfg.read_text(encoding="utf-8"))
    data["tokenizer_class"] = "PreTrainedTokenizerFast"
    tok_cfg.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (dir / "README.md").write_text(
        "# tiny Qwen2-Audio (voiceassist)\n\nThe real Qwen2-Audio architecture with random weights, built offline "
        "by `voiceassist make-tiny-model`. Its replies are noise; use it for tests and demos only.\n",
        encoding="utf-8",
    )
    return dir


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "voiceassist"


def tiny_model_dir() -> Path:
    """The tiny model's folder in the user cache (``$XDG_CACHE_HOME/voiceassist/tiny-qwen2-audio-vN``), built on
    first use. Race-safe: built in a temporary folder next to it, then renamed into place."""
    target = _cache_root() / f"tiny-qwen2-audio-v{TINY_VERSION}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-build-", dir=target.parent))
    try:
        build_tiny_model(tmp)
        try:
            os.rename(tmp, target)  # atomic; fails if another process won the race
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
