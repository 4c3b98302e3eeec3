"""Speculative first sentence (issue 15): during the hang-over, after the speculative prefill, the reply's start
is decoded ahead (``Session.speculate_reply``). Committed, the reply equals a non-speculative run's; rolled back
(speech resumed), everything speculative is undone — ids, KV cache, sampler state and its random generator — so
the conversation equals a run that never speculated. Greedy and sampled decoding, tiny Qwen2-Audio (random
weights: replies are noise), float32, real espeak speech.
"""

from __future__ import annotations

import threading

import pytest
import torch
from support.speech import speech_16k
from test_session import new_session, tiny  # noqa: F401  (the module-scoped model fixture)

from voiceassist.backend import UserTurn

PHRASES = ["What is the weather like today?", "Tell me a joke about cats, and make it a long one please.", "Thanks."]
MAX_NEW = 16
DECODINGS = {"greedy": {"temperature": 0.0}, "sampled": {"temperature": 0.9, "top_p": 0.95, "seed": 1234}}


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("speech")
    return [speech_16k(p, tmp) for p in PHRASES]


def session(tiny, decoding):  # noqa: F811
    return new_session(tiny, max_new_tokens=MAX_NEW, **DECODINGS[decoding])


def run_plain(tiny, decoding, turns):  # noqa: F811
    s = session(tiny, decoding)
    return [s.reply(t).reply_ids for t in turns], s


def state(s):
    return s.ids, s.turns, s._kv.length, s._kv.layer_lengths(), s._sampler.get_state()


def same_state(a, b) -> bool:
    return a[:4] == b[:4] and torch.equal(a[4], b[4])


def copy(turn: UserTurn) -> UserTurn:
    return UserTurn(audios=tuple(a.copy() for a in turn.audios), text=turn.text)


@pytest.mark.parametrize("decoding", list(DECODINGS))
def test_committed_first_sentence_gives_the_same_conversation(tiny, speech, decoding):  # noqa: F811
    turns = [UserTurn(audios=(speech[0],)), UserTurn(audios=(speech[1],)), UserTurn(audios=(speech[2],), text="Hm?")]
    expected, plain = run_plain(tiny, decoding, turns)
    s = session(tiny, decoding)
    for n, (turn, want) in enumerate(zip(turns, expected)):
        before = state(s)
        assert s.speculate(copy(turn))
        ahead = s.speculate_reply(lambda text, k=n: len(text) >= 4 + 6 * k)  # a first "sentence" of some length
        assert ahead is not None and len(ahead) >= 4 + 6 * n or len(s._spec.reply) in (0, MAX_NEW)
        assert s.turns == before[1] and s.ids == before[0]  # not part of the conversation yet
        pieces: list[str] = []
        r = s.reply(turn, pieces.append)
        assert s.last_speculated and r.reply_ids == want
        assert "".join(pieces) == r.text and r.text.startswith(ahead)
    assert s.ids == plain.ids
    if decoding == "sampled":  # the random generator is where a non-speculative run leaves it
        assert torch.equal(s._sampler.get_state(), plain._sampler.get_state())


@pytest.mark.parametrize("decoding", list(DECODINGS))
def test_speech_resumed_rolls_back_ids_cache_and_sampler(tiny, speech, decoding):  # noqa: F811
    full = speech[1]
    paused = full[: len(full) * 3 // 5]  # the audio so far when the segmenter heard a pause
    first, second = UserTurn(audios=(speech[0],)), UserTurn(audios=(full,))
    expected, plain = run_plain(tiny, decoding, [first, second])
    s = session(tiny, decoding)
    assert s.reply(first).reply_ids == expected[0]
    before = state(s)
    assert s.speculate(UserTurn(audios=(paused,)))
    cancel = threading.Event()
    steps = []

    def enough(text: str) -> bool:  # speech resumes after three speculative tokens
        steps.append(text)
        if len(steps) == 4:
            cancel.set()
        return False

    assert s.speculate_reply(enough, cancel) is None
    assert not s.speculating and same_state(state(s), before), "the speculation was not rolled back exactly"
    assert s.reply(second).reply_ids == expected[1]
    assert s.ids == plain.ids
    if decoding == "sampled":
        assert torch.equal(s._sampler.get_state(), plain._sampler.get_state())


@pytest.mark.parametrize("decoding", list(DECODINGS))
def test_the_real_turn_stops_the_speculative_decode_and_goes_on_from_it(tiny, speech, decoding):  # noqa: F811
    turn = UserTurn(audios=(speech[1],))
    expected, _ = run_plain(tiny, decoding, [turn])
    s = session(tiny, decoding)
    assert s.speculate(copy(turn))
    until = threading.Event()
    count = []

    def enough(text: str) -> bool:
        count.append(1)
        if len(count) == 3:
            until.set()  # the hang-over ended: the real turn waits for the worker
        return False

    ahead = s.speculate_reply(enough, until=until)
    assert ahead is not None and len(s._spec.reply) == 2
    r = s.reply(turn)
    assert r.reply_ids == expected[0] and s.last_speculated


def test_a_reply_shorter_than_the_speculation_is_complete_ahead(tiny, speech):  # noqa: F811
    turn = UserTurn(audios=(speech[2],))
    s = new_session(tiny, max_new_tokens=3, temperature=0.0)
    plain = new_session(tiny, max_new_tokens=3, temperature=0.0).reply(turn)
    assert s.speculate(copy(turn))
    ahead = s.speculate_reply(lambda text: False)  # "never enough": it runs to the reply's end
    assert s._spec.done and ahead == plain.text
    pieces: list[str] = []
    r = s.reply(turn, pieces.append)
    assert r.reply_ids == plain.reply_ids and "".join(pieces) == plain.text
    assert r.ttft_s < 0.05  # the text was handed out at once


def test_a_different_turn_or_a_reset_drops_the_speculative_reply(tiny, speech):  # noqa: F811
    s = new_session(tiny, max_new_tokens=MAX_NEW, temperature=0.0)
    before = state(s)
    assert s.speculate(UserTurn(audios=(speech[0],)))
    assert s.speculate_reply(lambda text: len(text) > 3)
    other = UserTurn(audios=(speech[1],))
    want = new_session(tiny, max_new_tokens=MAX_NEW, temperature=0.0).reply(other).reply_ids
    assert s.reply(other).reply_ids == want and not s.last_speculated
    assert s.speculate(UserTurn(audios=(speech[2],))) and s.speculate_reply(lambda text: len(text) > 3)
    s.reset()
    assert same_state(state(s)[:4] + (before[4],), before) and not s.speculating
    assert s.speculate_reply(lambda text: True) is None  # nothing to continue
