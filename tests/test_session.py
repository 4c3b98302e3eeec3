"""The model session against a from-scratch run over the whole conversation (tiny Qwen2-Audio, float32).

The tiny model has random weights: its replies are noise, but the processor, encoder, KV cache and decoding are
the real ones. Audio is real espeak-ng speech.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from support.reference import RefTurn, max_logit_diff, reference_reply, tiny_float32
from support.speech import speech_16k

from voiceassist.backend import Backend, UserTurn
from voiceassist.config import GenerationConfig
from voiceassist.errors import BackendError
from voiceassist.model import encoder as encoder_module
from voiceassist.model.session import Session

SYSTEM = "You are a helpful assistant."
MAX_NEW = 6  # tokens per reply: enough to exercise decoding, small enough for the 2-core CI budget
TOL = 1e-4  # logits, float32

PHRASES = [
    "What is the weather like today?",
    "Tell me a joke about cats.",
    "How far is the moon?",
    "Please set a timer for ten minutes.",
    "Where is the train station?",
    "Why is the sky blue?",
    "Can you recommend a good book?",
    "What time is it in Tokyo?",
    "Thank you very much.",
]
TEXTS = [
    "Hello there!",
    "And then?",
    "Answer in one word.",
    "Café, naïve, 🙂?",
    "What's 2+2?",
    "Say it again.",
    "Why?",
    "Goodbye.",
]


@pytest.fixture(scope="module")
def tiny():
    return tiny_float32()  # on one intra-op thread (see there)


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("speech")
    return [speech_16k(p, tmp) for p in PHRASES]


def new_session(tiny, context_limit: int = 8192, **gen) -> Session:
    model, processor = tiny
    gen.setdefault("max_new_tokens", MAX_NEW)
    gen.setdefault("temperature", 0.0)
    s = Session(model, processor, generation=GenerationConfig(system_prompt=SYSTEM, **gen), context_limit=context_limit)
    s.keep_logits = True
    return s


class Mirror:
    """A session and the same conversation kept for the from-scratch reference."""

    def __init__(self, tiny, session: Session | None = None) -> None:
        self.tiny = tiny
        self.session = session or new_session(tiny)
        self.turns: list[RefTurn] = []

    def turn(self, audios=(), text="", on_text=None, cancel=None):
        result = self.session.reply(
            UserTurn(audios=tuple(audios), text=text), on_text or (lambda _t: None), cancel or threading.Event()
        )
        self.turns.append(RefTurn(list(audios), text, list(result.reply_ids)))
        return result

    def check_last(self, max_new: int = MAX_NEW) -> None:
        """Ids held == the template's ids for the whole conversation; the last reply == from-scratch greedy."""
        model, processor = self.tiny
        ref_turns = [RefTurn(t.audios, t.text, t.reply_ids) for t in self.turns]
        prompt, reply, logits = reference_reply(model, processor, SYSTEM, ref_turns, max_new)
        held = list(self.session.ids)
        assert held == prompt + list(self.turns[-1].reply_ids)
        if not self.session.turns[-1].interrupted:
            assert self.turns[-1].reply_ids == reply
            assert max_logit_diff(self.session.last_logits, logits) < TOL


def test_session_implements_backend(tiny):
    assert isinstance(new_session(tiny), Backend)


@pytest.mark.parametrize("kind", ["audio", "text", "audio+text"])
def test_eight_turns_match_from_scratch(tiny, speech, kind):
    m = Mirror(tiny)
    if kind == "audio+text":
        m.session._kv.chunk = 64  # prefill in several chunks, boundaries inside the audio: still exact
    for k in range(8):
        audios = [speech[k]] if kind != "text" else []
        if kind == "audio+text" and k % 3 == 2:
            audios = [speech[k], speech[k + 1]]  # two audios in one turn: numbered across the conversation
        text = TEXTS[k] if kind != "audio" else ""
        result = m.turn(audios, text)
        assert result.context_tokens == len(m.session.ids)
        m.check_last()
    # The cache appends into spare room (no copy of the whole layer per token), grown past 256 tokens here.
    assert {type(layer).__name__ for layer in m.session._kv._cache.layers} == {"_GrowingLayer"}
    assert m.session._kv.length > 256 or kind == "text"
    # Audios are numbered across the conversation: "Audio 1" … in order, one <|audio_bos|> per audio.
    tok = tiny[1].tokenizer
    n_audios = sum(len(t.audios) for t in m.turns)
    assert list(m.session.ids).count(tok.convert_tokens_to_ids("<|audio_bos|>")) == n_audios


def test_prompt_ids_and_reply_ids_concatenate_to_the_conversation(tiny, speech):
    m = Mirror(tiny)
    parts: list[int] = []
    for k in range(3):
        r = m.turn([speech[k]], TEXTS[k] if k else "")
        parts += list(r.prompt_ids) + list(r.reply_ids)
    assert parts == list(m.session.ids)
    closing = tiny[1].tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert r.prompt_ids[0] == closing  # a turn's prompt starts by closing the previous reply


def test_each_audio_is_encoded_once(tiny, speech, monkeypatch):
    encoded = []
    real = encoder_module.encode_audios

    def spy(model, feats, mask, trimmed=True, cancel=None):
        encoded.append(feats.shape[0])
        return real(model, feats, mask, trimmed, cancel)

    monkeypatch.setattr(encoder_module, "encode_audios", spy)
    m = Mirror(tiny)
    for k in range(4):
        m.turn([speech[k]])
    assert encoded == [1, 1, 1, 1]


def test_cancel_stops_within_one_token_and_next_turn_is_exact(tiny, speech):
    m = Mirror(tiny, new_session(tiny, max_new_tokens=40))
    m.turn([speech[0]])
    cancel = threading.Event()
    pieces = []

    def on_text(piece):
        pieces.append(piece)
        if len(pieces) == 3:
            cancel.set()

    r = m.turn([speech[1]], on_text=on_text, cancel=cancel)
    assert r.interrupted and m.session.turns[-1].interrupted
    # Decoding stopped at the first check after the cancel: no token was sampled after the third piece.
    assert r.n_tokens == len(m.session.last_logits) and r.n_tokens < 40
    assert tiny[1].tokenizer.decode(list(r.reply_ids)).startswith("".join(pieces))
    m.check_last(40)  # ids: the partial reply is in the history
    m.turn([speech[2]], "And now?")
    m.check_last(40)


def test_cancel_before_the_first_token_keeps_an_empty_closed_reply(tiny, speech):
    m = Mirror(tiny)
    cancel = threading.Event()
    cancel.set()
    r = m.turn([speech[0]], cancel=cancel)
    assert r.interrupted and r.n_tokens == 0 and r.reply_ids == ()
    m.turn([], "Hello?")
    m.check_last()


def test_truncate_last_reply_keeps_what_was_spoken(tiny, speech):
    m = Mirror(tiny, new_session(tiny, max_new_tokens=12))
    r = m.turn([speech[0]])
    tok = tiny[1].tokenizer
    ids = list(r.reply_ids)
    assert len(ids) == 12
    spoken = tok.decode(ids[:5]) + "x"  # what the speaker said: 5 tokens and a bit that is no token
    m.session.truncate_last_reply(spoken)
    last = m.session.turns[-1]
    assert last.interrupted and list(last.reply_ids) == ids[:5]
    assert last.reply_text == tok.decode(ids[:5])
    m.turns[-1].reply_ids = ids[:5]
    m.turn([speech[1]])
    m.check_last(12)
    m.session.truncate_last_reply("")  # nothing spoken: an empty reply, still closed
    assert m.session.turns[-1].reply_ids == ()
    m.turns[-1].reply_ids = []
    m.turn([], "Are you there?")
    m.check_last(12)


def test_truncate_an_earlier_reply_keeps_the_turns_after_it_and_the_next_turn_is_exact(tiny, speech, monkeypatch):
    """A stop while two replies were queued in the speaker: the one playing is cut back to what was heard, the
    later turn stays (its audio not encoded again), and the next turn matches a from-scratch run."""
    m = Mirror(tiny, new_session(tiny, max_new_tokens=12))
    m.turn([speech[0]])
    r1 = m.turn([speech[1]])
    r2 = m.turn([speech[2]], "And then?")
    tok = tiny[1].tokenizer
    ids1 = list(r1.reply_ids)
    encoded = []
    real = encoder_module.encode_audios
    monkeypatch.setattr(encoder_module, "encode_audios", lambda *a, **k: encoded.append(1) or real(*a, **k))
    m.session.truncate_reply(tok.decode(ids1[:4]), 1)
    cut, last = m.session.turns[-2], m.session.turns[-1]
    assert cut.interrupted and list(cut.reply_ids) == ids1[:4] and cut.reply_text == tok.decode(ids1[:4])
    assert list(last.reply_ids) == list(r2.reply_ids) and not last.interrupted
    assert len(m.session.ids) == sum(len(t.prompt_ids) + len(t.reply_ids) for t in m.session.turns)
    m.turns[-2].reply_ids = ids1[:4]
    m.turn([], "Go on.")
    m.check_last(12)  # the rebuilt cache (after the cut) gives the from-scratch logits
    assert encoded == [], "no audio was encoded again"
    m.session.truncate_reply("anything", 9)  # no such turn: nothing changes
    assert list(m.session.turns[-3].reply_ids) == ids1[:4]


def test_context_budget_drops_oldest_turns_without_reencoding(tiny, speech, monkeypatch):
    encoded = []
    real = encoder_module.encode_audios
    monkeypatch.setattr(
        encoder_module,
        "encode_audios",
        lambda model, f, mask, trimmed=True, cancel=None: (
            encoded.append(f.shape[0]) or real(model, f, mask, trimmed, cancel)
        ),
    )
    limit = 400
    s = new_session(tiny, context_limit=limit)
    m = Mirror(tiny, s)
    dropped = 0
    for k in range(9):
        r = m.turn([speech[k]], TEXTS[k % len(TEXTS)])
        dropped += r.dropped_turns
        if r.dropped_turns:
            del m.turns[: r.dropped_turns]  # the reference conversation drops the same turns
        assert s.context_tokens <= limit
        m.check_last()  # the system prompt stays; audio renumbered from 1; exact reply
    assert dropped > 0 and s.dropped_turns == dropped
    assert len(s.turns) < 9
    assert encoded == [1] * 9  # dropped-and-rebuilt turns were never encoded again


def test_a_turn_too_long_for_the_context_is_refused_and_nothing_changes(tiny, speech):
    s = new_session(tiny, context_limit=300, max_new_tokens=4)
    s.reply(UserTurn(text="Hi"))
    before = s.ids
    long_audio = np.concatenate([speech[0]] * 8)[: 16000 * 25]
    with pytest.raises(BackendError, match="context limit"):
        s.reply(UserTurn(audios=(long_audio,)))
    assert s.ids == before


class _Boom(RuntimeError):
    pass


def _arm_layer_failure(model, layer_index: int, after_calls: int):
    """A pre-forward hook on one decoder layer that raises on its ``after_calls``-th call (an injected failure:
    the layers before it have already written this step into the KV cache, the others have not)."""
    calls = {"n": 0}

    def hook(_module, _inputs):
        calls["n"] += 1
        if calls["n"] == after_calls:
            raise _Boom("injected failure in the middle of the model")

    return model.model.language_model.layers[layer_index].register_forward_pre_hook(hook)


@pytest.mark.parametrize("where", ["prefill", "decode", "callback"])
def test_failure_inside_a_turn_leaves_the_session_unchanged(tiny, speech, where):
    model, _ = tiny
    m = Mirror(tiny)
    m.turn([speech[0]], "First.")
    m.turn([speech[1]])
    ids, turns = m.session.ids, m.session.turns
    cached = m.session._kv.length
    lengths = m.session._kv.layer_lengths()
    assert lengths == [cached] * len(lengths)
    handle = None
    on_text = None
    if where == "prefill":
        handle = _arm_layer_failure(model, 1, 1)
    elif where == "decode":
        handle = _arm_layer_failure(model, 1, 3)
    else:

        def on_text(piece):
            raise _Boom("the display went away")

    try:
        with pytest.raises(BackendError) as info:
            m.session.reply(UserTurn(audios=(speech[2],)), on_text or (lambda _t: None), threading.Event())
    finally:
        if handle is not None:
            handle.remove()
    assert "\n" not in str(info.value) and "unchanged" in str(info.value)
    assert m.session.ids == ids and m.session.turns == turns and m.session._kv.length == cached
    assert m.session._kv.layer_lengths() == lengths  # every layer cut back, even those the failure outran
    m.turn([speech[2]])  # the next turn works, and is exact
    m.check_last()


def test_out_of_memory_is_one_line_and_harmless(tiny, speech):
    model, _ = tiny
    m = Mirror(tiny)
    m.turn([speech[0]])
    ids = m.session.ids

    def hook(_module, _inputs, _output):  # injected: no GPU here to run out of
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    handle = model.model.language_model.layers[0].register_forward_hook(hook)
    try:
        with pytest.raises(BackendError, match="out of GPU memory.*unchanged"):
            m.session.reply(UserTurn(text="Hi"))
    finally:
        handle.remove()
    assert m.session.ids == ids
    m.turn([], "Hi")
    m.check_last()


def test_reset_starts_a_new_conversation(tiny, speech):
    s = new_session(tiny)
    first = s.reply(UserTurn(audios=(speech[0],)))
    s.reply(UserTurn(text="More."))
    s.reset()
    assert s.ids == () and s.context_tokens == 0
    again = s.reply(UserTurn(audios=(speech[0],)))
    assert again.reply_ids == first.reply_ids and again.prompt_ids == first.prompt_ids


def test_sampling_is_reproducible_with_a_seed_and_restored_after_a_failure(tiny, speech):
    def run(fail: bool):
        s = new_session(tiny, temperature=0.9, top_p=0.95, seed=7, max_new_tokens=10)
        s.reply(UserTurn(audios=(speech[0],)))
        if fail:

            def boom(_piece):
                raise _Boom("x")

            with pytest.raises(BackendError):
                s.reply(UserTurn(text="Again?"), boom)
        return s.reply(UserTurn(text="Again?")).reply_ids

    a, b = run(False), run(True)
    assert a == b and len(a) > 0


def test_streamed_text_has_no_broken_characters(tiny):
    from voiceassist.model.decoding import IncrementalDetokenizer

    tok = tiny[1].tokenizer
    text = "Café naïve 🙂 日本語 Привет — “quotes” …"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(text.split())  # multi-byte characters span several byte-level tokens
    detok = IncrementalDetokenizer(tok)
    pieces = [detok.feed(i) for i in ids] + [detok.flush()]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == text


def test_bad_turns_are_one_line_errors(tiny):
    s = new_session(tiny)
    for turn, what in [
        (UserTurn(), "audio or text"),
        (UserTurn(audios=(np.zeros((2, 16000), np.float32),)), "mono"),
        (UserTurn(audios=(np.zeros(10, np.float32),)), "empty"),
        (UserTurn(audios=(np.full(16000, np.nan, np.float32),)), "NaN"),
    ]:
        with pytest.raises(BackendError, match=what):
            s.reply(turn)
    assert s.ids == ()


def test_audio_over_30_s_is_split_into_chunks(tiny, speech):
    audio = np.concatenate([speech[k % len(speech)] for k in range(30)])
    assert len(audio) > 16000 * 31
    s = new_session(tiny)
    r = s.reply(UserTurn(audios=(audio,)))
    tok = tiny[1].tokenizer
    n = -(-len(audio) // (16000 * 30))
    assert list(r.prompt_ids).count(tok.convert_tokens_to_ids("<|audio_bos|>")) >= n
    assert s.turns[-1].message.n_audios >= n and sum(s.turns[-1].audio_s) == pytest.approx(len(audio) / 16000)


@pytest.mark.parametrize("seconds", [0.0001, 0.01, 0.5, 1.0, 2.0 + 37 / 16000, 5.0, 10.0 + 1 / 16000, 29.99, 30.0])
def test_features_equal_the_processors_bit_for_bit(tiny, speech, seconds):
    from voiceassist.model.features import extract

    fe = tiny[1].feature_extractor
    n = max(1, int(seconds * 16000))
    audio = np.tile(np.concatenate(speech), 2)[:n]
    ref = fe([audio], sampling_rate=16000, padding="max_length", return_attention_mask=True, return_tensors="pt")
    feats, mask = extract(fe, [audio])
    assert torch.equal(feats, ref["input_features"])
    assert torch.equal(mask, ref["attention_mask"].long())


def test_collapsed_history_renders_like_the_whole_history(tiny):
    import random

    from voiceassist.model.prompt import PromptBuilder, UserMessage

    processor = tiny[1]
    builder = PromptBuilder(processor.tokenizer, processor.chat_template)
    assert builder.collapsible  # Qwen2-Audio's template: a turn depends only on the audios before it
    rng = random.Random(3)
    for _ in range(20):
        earlier = [
            UserMessage(rng.randint(0, 3), rng.choice(["", "hi", "What's that?"])) for _ in range(rng.randint(0, 12))
        ]
        new = UserMessage(rng.randint(0, 2), rng.choice(["", "Why?"]))
        if not new.n_audios and not new.text:
            new = UserMessage(1, "")
        for system in ("", SYSTEM):
            assert builder._turn_text(system, earlier, new, collapse=True) == builder._turn_text(
                system, earlier, new, collapse=False
            )
