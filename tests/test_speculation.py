"""Speculative prefill (issue 7, part 2): a turn prefilled during the hang-over gives exactly the reply it
would have given without speculation, whether the speculation is committed or rolled back (speech resumed).
Tiny Qwen2-Audio (random weights: replies are noise), float32, greedy, real espeak speech."""

from __future__ import annotations

import threading

import pytest
import torch
from support.speech import speech_16k
from test_session import Mirror, new_session, tiny  # noqa: F401  (the module-scoped model fixture)

from voiceassist.backend import UserTurn

PHRASES = ["What is the weather like today?", "Tell me a joke about cats, and make it a long one please.", "Thank you."]


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("speech")
    return [speech_16k(p, tmp) for p in PHRASES]


def plain_replies(tiny, turns):  # noqa: F811
    s = new_session(tiny)
    out = []
    for t in turns:
        r = s.reply(t)
        out.append((r.prompt_ids, r.reply_ids, [x.clone() for x in s.last_logits]))
    return out


def state(s):
    return s.ids, s.turns, s._kv.length, s._kv.layer_lengths()


def test_committed_speculation_gives_the_same_reply(tiny, speech):  # noqa: F811
    turns = [UserTurn(audios=(speech[0],)), UserTurn(audios=(speech[1],)), UserTurn(audios=(speech[2],), text="Hm?")]
    expected = plain_replies(tiny, turns)
    m = Mirror(tiny)
    m.session._kv.chunk = 48  # several chunks per turn: the speculative and the normal prefill share them
    for turn, (prompt, reply, logits) in zip(turns, expected):
        before = state(m.session)
        assert m.session.speculate(UserTurn(audios=tuple(a.copy() for a in turn.audios), text=turn.text))
        assert m.session.speculating and state(m.session)[:2] == before[:2]  # not part of the conversation yet
        r = m.turn(turn.audios, turn.text)
        assert m.session.last_speculated and not m.session.speculating
        assert r.prompt_ids == prompt and r.reply_ids == reply
        m.check_last()  # and the from-scratch reference agrees
        # Every turn decodes from the speculative prefill's logits: the same numbers as without it.
        assert all(torch.allclose(a, b, atol=1e-5, equal_nan=True) for a, b in zip(m.session.last_logits, logits))


def test_speech_resumed_rolls_back_and_the_full_turn_is_exact(tiny, speech):  # noqa: F811
    full = speech[1]
    paused = full[: len(full) * 3 // 5]  # the audio so far when the segmenter heard a pause
    expected = plain_replies(tiny, [UserTurn(audios=(speech[0],)), UserTurn(audios=(full,))])
    m = Mirror(tiny)
    m.turn([speech[0]])
    before = state(m.session)
    assert m.session.speculate(UserTurn(audios=(paused,)))
    m.session.cancel_speculation()  # speech resumed
    assert state(m.session) == before
    r = m.turn([full])
    assert not m.session.last_speculated
    assert r.reply_ids == expected[1][1]
    m.check_last()


def test_a_different_turn_rolls_the_speculation_back_by_itself(tiny, speech):  # noqa: F811
    expected = plain_replies(tiny, [UserTurn(audios=(speech[0],)), UserTurn(audios=(speech[1],))])
    m = Mirror(tiny)
    m.turn([speech[0]])
    assert m.session.speculate(UserTurn(audios=(speech[1][:16000],)))
    r = m.turn([speech[1]])  # the utterance went on: no cancel_speculation() call came
    assert not m.session.last_speculated and r.reply_ids == expected[1][1]
    m.check_last()


def test_cancel_during_the_speculative_prefill(tiny, speech):  # noqa: F811
    model, _ = tiny
    m = Mirror(tiny)
    m.turn([speech[0]])
    before = state(m.session)
    cancel = threading.Event()
    cancel.set()
    assert not m.session.speculate(UserTurn(audios=(speech[1],)), cancel)
    assert state(m.session) == before
    # Speech resumes while the prefill runs: the next chunk boundary stops it.
    m.session._kv.chunk = 32
    cancel = threading.Event()
    handle = model.model.language_model.layers[-1].register_forward_hook(lambda *_: cancel.set())
    try:
        assert not m.session.speculate(UserTurn(audios=(speech[1],)), cancel)
    finally:
        handle.remove()
    assert state(m.session) == before and not m.session.speculating
    # Speech resumes while the audio is still being encoded: the encoder stops before its next layer, and
    # nothing reaches the language model.
    tower = getattr(model, "audio_tower", None) or model.model.audio_tower
    cancel = threading.Event()
    ran: list[str] = []
    hooks = [tower.layers[0].register_forward_hook(lambda *_: cancel.set())]
    hooks += [
        layer.register_forward_pre_hook(lambda *_, i=i: ran.append(f"encoder {i}"))
        for i, layer in enumerate(tower.layers)
    ]
    hooks.append(model.model.language_model.register_forward_pre_hook(lambda *_: ran.append("language model")))
    try:
        assert not m.session.speculate(UserTurn(audios=(speech[1],)), cancel)
    finally:
        for h in hooks:
            h.remove()
    assert len(tower.layers) > 1 and ran == ["encoder 0"], ran
    assert state(m.session) == before and not m.session.speculating
    m.turn([speech[1]])
    m.check_last()


def test_truncate_or_reset_drop_a_pending_speculation(tiny, speech):  # noqa: F811
    m = Mirror(tiny, new_session(tiny, max_new_tokens=10))
    r = m.turn([speech[0]])
    assert m.session.speculate(UserTurn(audios=(speech[1],)))
    spoken = tiny[1].tokenizer.decode(list(r.reply_ids[:3]))
    m.session.truncate_last_reply(spoken)
    assert not m.session.speculating and m.session.turns[-1].reply_ids == r.reply_ids[:3]
    m.turns[-1].reply_ids = list(r.reply_ids[:3])
    m.turn([speech[1]])
    m.check_last(10)
    assert m.session.speculate(UserTurn(text="Again"))
    m.session.reset()
    assert not m.session.speculating and m.session.ids == () and m.session._kv.length == 0


def test_a_failed_speculation_changes_nothing(tiny, speech):  # noqa: F811
    model, _ = tiny
    m = Mirror(tiny)
    m.turn([speech[0]])
    before = state(m.session)

    def boom(*_):
        raise RuntimeError("injected failure")

    handle = model.model.language_model.layers[1].register_forward_pre_hook(boom)
    try:
        assert not m.session.speculate(UserTurn(audios=(speech[1],)))
    finally:
        handle.remove()
    assert state(m.session) == before
    assert not m.session.speculate(UserTurn())  # an empty turn: refused quietly
    m.turn([speech[1]])
    m.check_last()
