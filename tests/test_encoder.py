"""The trimmed audio encoder gives what the library's padded encoder gives (issue 7, part 1).

Models: the tiny offline Qwen2-Audio (random weights: its replies are noise, every code path is real) and a
random Qwen2-Audio encoder of the real width (d_model 1280, 20 heads, FFN 5120, 128 mel bins) with 2 layers.
Audio: espeak-ng speech tiled to length, with a little pink noise so no stretch is digital silence.
Features come from the real processor / WhisperFeatureExtractor, so lengths and padding frames are its own.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from support.speech import SR, pink_noise, speech_16k

from voiceassist.model.encoder import (
    MEL_FRAMES,
    EncodingCancelled,
    _run_tower,
    conv_length,
    encode_audios,
    token_count,
    trimmed_frames,
)

HOP = 160  # samples per mel frame at 16 kHz
TOL = 1e-4  # max abs difference allowed between trimmed and padded (float32)

# Valid mel frame counts L: odd and even around 0.5, 1, 2, 5, 10, 20 and 30 s, the 30 s edge.
TINY_FRAMES = [
    50,
    51,
    52,
    53,
    100,
    101,
    199,
    200,
    333,
    500,
    501,
    999,
    1000,
    1001,
    1999,
    2000,
    2001,
    2997,
    2998,
    2999,
    3000,
]
REAL_FRAMES = [51, 200, 501, 1000, 3000]  # few: the real-width encoder costs ~3 s per padded clip here


def _samples_for_frames(frames: int, short_by: int) -> int:
    """A sample count whose processor frame count is ``frames`` (ceil(samples / 160)), ``short_by`` < 160
    samples shy of the full frames, so clips are not all whole multiples of the hop."""
    return frames * HOP - short_by


@pytest.fixture(scope="module")
def voice(tmp_path_factory) -> np.ndarray:
    return speech_16k(
        "The quick brown fox jumps over the lazy dog, then asks what time it is.", tmp_path_factory.mktemp("speech")
    )


def _clip(voice: np.ndarray, samples: int, seed: int) -> np.ndarray:
    audio = np.resize(voice, samples).astype(np.float32)
    return audio + pink_noise(samples / SR, rms=0.003, seed=seed)[:samples]


@pytest.fixture(scope="module")
def tiny():
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    from voiceassist.model.tiny import tiny_model_dir

    path = tiny_model_dir()
    model = Qwen2AudioForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    return model, AutoProcessor.from_pretrained(path)


def _features(extractor, clips):
    out = extractor(clips, sampling_rate=SR, return_attention_mask=True, padding="max_length", return_tensors="pt")
    return out["input_features"], out["attention_mask"]


def test_length_formulas():
    # The facts: T = L + 1 for even L, L + 2 for odd L, capped at 3000.
    assert [trimmed_frames(n) for n in (50, 51, 2998, 2999, 3000)] == [51, 53, 2999, 3000, 3000]
    assert [conv_length(n) for n in (1, 2, 3, 50, 51, 3000)] == [1, 1, 2, 25, 26, 1500]
    assert [token_count(n) for n in (0, 1, 2, 3, 4, 5, 50, 51, 3000)] == [0, 0, 0, 1, 1, 1, 12, 13, 750]


def test_token_counts_equal_processor_expansion(tiny, voice):
    model, processor = tiny
    seconds = [0.5, 0.51, 2.0, 7.33, 30.0, 35.0]  # 35 s: the processor silently keeps the first 30 s
    clips = [_clip(voice, int(s * SR), seed=i) for i, s in enumerate(seconds)]
    conversation = [
        {"role": "user", "content": [{"type": "audio", "audio_url": f"{i}.wav"} for i in range(len(clips))]}
    ]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=text, audio=clips, sampling_rate=SR, return_tensors="pt")
    audio_id = processor.tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    ids = inputs["input_ids"][0].tolist()
    runs = [len(list(group)) for tok, group in itertools.groupby(ids) if tok == audio_id]  # one run per audio
    lengths = inputs["feature_attention_mask"].sum(-1).tolist()
    assert lengths[-1] == MEL_FRAMES and lengths[-2] == MEL_FRAMES
    assert runs == [token_count(n) for n in lengths]
    for trimmed in (False, True):
        out = encode_audios(model, inputs["input_features"], inputs["feature_attention_mask"], trimmed=trimmed)
        assert [t.shape for t in out] == [(n, model.config.text_config.hidden_size) for n in runs]


def test_trimmed_equals_padded_tiny(tiny, voice):
    model, processor = tiny
    samples = [_samples_for_frames(n, short_by=(37 * i) % HOP) for i, n in enumerate(TINY_FRAMES)]
    samples += [30 * SR, 35 * SR, 3 * HOP, 5 * HOP]  # exactly 30 s; truncated to 30 s; N = 1 edge cases
    clips = [_clip(voice, n, seed=i) for i, n in enumerate(samples)]
    features, mask = _features(processor.feature_extractor, clips)
    lengths = mask.sum(-1).tolist()
    assert lengths[: len(TINY_FRAMES)] == TINY_FRAMES  # the clips really have the odd/even lengths meant
    padded = encode_audios(model, features, mask, trimmed=False)
    batched = encode_audios(model, features, mask, trimmed=True)  # mixed lengths: grouped, masked batches
    hidden = model.config.text_config.hidden_size
    for i, n in enumerate(lengths):
        alone = encode_audios(model, features[i : i + 1], mask[i : i + 1], trimmed=True)[0]
        assert padded[i].shape == batched[i].shape == alone.shape == (token_count(n), hidden)
        assert (batched[i] - padded[i]).abs().max().item() < TOL, f"L={n} (batched)"
        assert (alone - padded[i]).abs().max().item() < TOL, f"L={n} (alone)"


@pytest.fixture(scope="module")
def real_width(voice):
    """A random Qwen2-Audio with the real encoder width and 2 encoder layers (a 1-layer tiny text model)."""
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration, WhisperFeatureExtractor

    torch.manual_seed(7)
    config = Qwen2AudioConfig(
        audio_config=dict(
            d_model=1280,
            encoder_attention_heads=20,
            encoder_ffn_dim=5120,
            encoder_layers=2,
            num_mel_bins=128,
            max_source_positions=1500,
        ),
        text_config=dict(
            hidden_size=256,
            intermediate_size=512,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=4,
            vocab_size=512,
        ),
    )
    model = Qwen2AudioForConditionalGeneration(config).eval()
    extractor = WhisperFeatureExtractor(feature_size=128, sampling_rate=SR, hop_length=HOP, chunk_length=30)
    samples = [_samples_for_frames(n, short_by=(53 * i) % HOP) for i, n in enumerate(REAL_FRAMES)]
    features, mask = _features(extractor, [_clip(voice, n, seed=10 + i) for i, n in enumerate(samples)])
    assert mask.sum(-1).tolist() == REAL_FRAMES
    padded = encode_audios(model, features, mask, trimmed=False)
    return model, features, mask, padded


def test_trimmed_equals_padded_real_width(real_width):
    model, features, mask, padded = real_width
    trimmed = encode_audios(model, features, mask, trimmed=True)
    for n, p, t in zip(REAL_FRAMES, padded, trimmed):
        assert t.shape == p.shape == (token_count(n), 256)
        assert (t - p).abs().max().item() < TOL, f"L={n}"


def test_cutting_at_exactly_L_frames_is_wrong(real_width):
    """The control that shows the comparison can fail: dropping the one padding frame that position C - 1
    reads (cutting the features at L instead of T) moves the outputs far beyond the tolerance."""
    model, features, mask, padded = real_width
    tower, projector = model.model.audio_tower, model.model.multi_modal_projector
    with torch.no_grad():
        for i, n in enumerate(REAL_FRAMES[:2]):  # one odd, one even length
            hidden = _run_tower(tower, features[i : i + 1, :, :n], [conv_length(n)])
            wrong = projector(hidden[0, : token_count(n)])
            assert (wrong - padded[i]).abs().max().item() > 100 * TOL, f"L={n}"


def _greedy_both_ways(model, processor, clips, n_tokens=16):
    """(library padded generate, generate over our trimmed embeddings) reply ids, and the max logit gap."""
    conversation = [
        {
            "role": "user",
            "content": [{"type": "audio", "audio_url": f"{i}.wav"} for i in range(len(clips))]
            + [{"type": "text", "text": "What do you hear?"}],
        }
    ]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=text, audio=clips, sampling_rate=SR, return_tensors="pt")
    audio = torch.cat(encode_audios(model, inputs["input_features"], inputs["feature_attention_mask"]))
    ids = inputs["input_ids"]
    embeds = model.get_input_embeddings()(ids)
    is_audio = (ids == model.config.audio_token_id).unsqueeze(-1)
    embeds = embeds.masked_scatter(is_audio, audio.to(embeds.dtype))
    with torch.no_grad():
        reference = model(**inputs).logits
        ours = model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"]).logits
        want = model.generate(**inputs, max_new_tokens=n_tokens, min_new_tokens=n_tokens, do_sample=False)
        got = model.generate(
            inputs_embeds=embeds,
            attention_mask=inputs["attention_mask"],
            max_new_tokens=n_tokens,
            min_new_tokens=n_tokens,
            do_sample=False,
        )
    return want[0, ids.shape[1] :].tolist(), got[0].tolist(), (ours - reference).abs().max().item()


def test_greedy_reply_identical_through_model_embeddings(tiny, voice):
    """End to end without the session: trimmed audio embeddings scattered into the prompt's embeddings give
    the same logits and the same greedy reply as the library's own padded forward and generate."""
    replies = []
    for clips in (
        [_clip(voice, int(s * SR), seed=20 + i) for i, s in enumerate((1.37, 4.0))],
        [_clip(voice, int(2.51 * SR), seed=30)],
    ):
        want, got, gap = _greedy_both_ways(*tiny, clips)
        # The tiny model's large random weights (std 0.2) amplify the encoders' ~5e-6 float rounding: a 1e-6
        # relative nudge of the audio embeddings moves its logits (scale ~10) by ~2e-5; we see up to ~1.5e-4.
        # A wrong encoding (features cut at L frames) moves them by ~9.
        assert gap < 1e-3
        assert got == want
        replies.append(want)
    assert replies[0] != replies[1]  # the control: replies follow the audio, so equality above means something


def test_session_replies_identical_with_trimmed_encoder_on_and_off(tiny, voice):
    """The session (model.trimmed_encoder true vs false) gives identical greedy reply ids over a multi-turn
    conversation: audio-only, audio plus text, two audios, a text-only turn in between."""
    from voiceassist.backend import UserTurn
    from voiceassist.config import GenerationConfig
    from voiceassist.model.session import Session

    model, processor = tiny
    greedy = GenerationConfig(temperature=0.0, top_p=0.0, max_new_tokens=12)
    turns = [
        UserTurn(audios=(_clip(voice, int(0.77 * SR), seed=40),)),
        UserTurn(audios=(_clip(voice, int(5.0 * SR) + 80, seed=41),), text="And this one?"),
        UserTurn(text="Say it again."),
        UserTurn(audios=(_clip(voice, int(2.0 * SR), seed=42), _clip(voice, 30 * SR, seed=43))),
    ]
    replies = {}
    for trimmed in (True, False):
        session = Session(model, processor, generation=greedy, trimmed_encoder=trimmed, description="tiny Qwen2-Audio")
        replies[trimmed] = [session.reply(turn).reply_ids for turn in turns]
    assert replies[True] == replies[False]
    audio_replies = [replies[True][i] for i in (0, 1, 3)]
    assert all(audio_replies) and len(set(audio_replies)) > 1  # the control: replies follow the audio


def test_bad_input_is_refused(tiny):
    model, _ = tiny
    with pytest.raises(ValueError, match="input_features"):
        encode_audios(model, torch.zeros(128, MEL_FRAMES), torch.ones(1, MEL_FRAMES))
    with pytest.raises(TypeError, match="not a Qwen2-Audio model"):
        encode_audios(torch.nn.Linear(2, 2), torch.zeros(1, 128, MEL_FRAMES), torch.ones(1, MEL_FRAMES))
    assert encode_audios(model, torch.zeros(0, 128, MEL_FRAMES), torch.zeros(0, MEL_FRAMES)) == []


def test_cancel_stops_a_trimmed_encode(tiny, voice):
    import threading

    model, processor = tiny
    features, mask = _features(processor.feature_extractor, [_clip(voice, 3 * SR, seed=50)])
    cancel = threading.Event()
    kept = encode_audios(model, features, mask, cancel=cancel)[0]  # not set: runs to the end
    assert kept.shape == (token_count(300), model.config.text_config.hidden_size)
    cancel.set()
    with pytest.raises(EncodingCancelled):
        encode_audios(model, features, mask, cancel=cancel)
