"""The wake gate as a specification: which utterances become turns, what is cut, when it stops a reply.

The gate is a pure state machine, so these tests feed it the messages the segmenter and the detector send
(built here with known audio and times); the detector and the segmenter on real espeak speech are in
test_wake_detector.py and test_wake_cli.py.
"""

from __future__ import annotations

import random

import numpy as np

from voiceassist.events import SpeechPaused, SpeechResumed, SpeechStarted, Utterance
from voiceassist.wake.detector import Detection
from voiceassist.wake.gate import SpeechDiscarded, StateChanged, StopReply, WakeGate, WakeState, WakeTurn

SR = 16000
LISTEN_S, FOLLOW_UP_S = 5.0, 4.0


def tone(seconds: float, amp: float = 0.3, seed: int = 0) -> np.ndarray:
    """Speech-loud noise (the gate only looks at energy)."""
    return (amp * np.random.default_rng(seed).standard_normal(round(seconds * SR))).astype(np.float32)


def quiet(seconds: float) -> np.ndarray:
    return (1e-4 * np.random.default_rng(1).standard_normal(round(seconds * SR))).astype(np.float32)


def utterance(start_t: float, *parts: np.ndarray, tail_s: float = 0.2) -> Utterance:
    """An utterance made of ``parts`` starting at ``start_t``; its speech ends ``tail_s`` before its audio."""
    audio = np.concatenate([*parts, quiet(tail_s)])
    return Utterance(chunks=(audio,), start_t=start_t, end_t=start_t + len(audio) / SR - tail_s, reasons=("silence",))


def wake(t: float) -> Detection:
    return Detection(t=t, word="okay_nabu", probability=0.95)


def of(messages: list, kind: type) -> list:
    return [m for m in messages if isinstance(m, kind)]


def say(gate: WakeGate, utt: Utterance, detections: tuple[float, ...] = (), pause: bool = False) -> list:
    """Feed one utterance as the segmenter and detector would: SpeechStarted at its onset, detections at their
    times, an optional SpeechPaused, then the Utterance."""
    out = gate.on_segmenter(SpeechStarted(utt.start_t + 0.05))
    for t in detections:
        out += gate.on_detection(wake(t))
    if pause:
        out += gate.on_segmenter(SpeechPaused(utt))
    out += gate.on_segmenter(utt)
    return out


def new_gate(follow_up_s: float = FOLLOW_UP_S) -> WakeGate:
    return WakeGate(listen_s=LISTEN_S, follow_up_s=follow_up_s, min_turn_s=0.25)


def test_speech_without_the_wake_word_is_not_a_turn():
    gate = new_gate()
    out = say(gate, utterance(1.0, tone(1.5)), pause=True)
    assert out == []  # nothing forwarded at all: no SpeechStarted, no pause for speculation, no turn
    assert gate.state is WakeState.WAITING


def test_same_breath_the_turn_is_the_question_without_the_wake_word():
    gate = new_gate()
    wake_s, gap_s, question_s = 0.6, 0.15, 1.2
    utt = utterance(10.0, quiet(0.3), tone(wake_s, seed=2), quiet(gap_s), tone(question_s, seed=3))
    wake_end_t = 10.0 + 0.3 + wake_s
    out = say(gate, utt, detections=(wake_end_t + 0.2,))  # the detector fires ~0.2 s after the word's end
    turns = of(out, WakeTurn)
    assert len(turns) == 1 and turns[0].via == "wake" and turns[0].wake.t == wake_end_t + 0.2
    cut = turns[0].utterance
    # The cut lies in the gap: none of the wake word's audio, all of the question's.
    assert wake_end_t <= cut.start_t <= wake_end_t + gap_s + 0.001, cut.start_t
    frames = np.concatenate(cut.chunks)[: len(np.concatenate(cut.chunks)) // 160 * 160].reshape(-1, 160)
    loud_s = float(((frames**2).mean(axis=1) > 1e-3).sum()) * 0.01  # 10 ms frames at speech level
    assert abs(loud_s - question_s) <= 0.02, loud_s
    assert cut.end_t == utt.end_t
    # Messages in order: SpeechStarted, the turn, then the state change; the gate waits again for the reply.
    kinds = [type(m) for m in out if not isinstance(m, StateChanged)]
    assert kinds == [SpeechStarted, WakeTurn]
    assert gate.replying and gate.state is WakeState.WAITING


def test_the_wake_word_alone_opens_the_listening_window():
    gate = new_gate()
    utt = utterance(10.0, tone(0.6))
    out = say(gate, utt, detections=(10.8,))
    assert of(out, WakeTurn) == [] and gate.state is WakeState.LISTENING
    opened = of(out, StateChanged)[0]
    assert opened.reason == "wake" and opened.until_t == 10.8 + LISTEN_S
    # A question after a pause: a turn, the whole of it, and it names the wake word that opened the window.
    question = utterance(13.0, tone(1.0, seed=4))
    out = say(gate, question, pause=True)
    turns = of(out, WakeTurn)
    assert len(turns) == 1 and turns[0].via == "listen" and turns[0].wake.t == 10.8
    assert turns[0].utterance is question
    # The forwarded pause carried the very utterance that became the turn (valid speculative prefill).
    assert of(out, SpeechPaused)[0].utterance is question


def test_speech_after_the_listening_window_is_not_a_turn_and_the_window_times_out():
    gate = new_gate()
    say(gate, utterance(10.0, tone(0.6)), detections=(10.8,))
    assert gate.tick(10.8 + LISTEN_S - 0.1) == []
    closed = gate.tick(10.8 + LISTEN_S + 0.1)
    assert [(m.state, m.reason) for m in closed] == [(WakeState.WAITING, "timeout")]
    assert of(say(gate, utterance(10.8 + LISTEN_S + 0.5, tone(1.0))), WakeTurn) == []


def test_a_turn_that_started_in_the_window_keeps_it_open_while_it_lasts():
    gate = new_gate()
    say(gate, utterance(10.0, tone(0.6)), detections=(10.8,))
    start = 10.8 + LISTEN_S - 0.5
    gate.on_segmenter(SpeechStarted(start))
    assert gate.tick(start + 3.0) == []  # the window has passed, but this speech started inside it
    out = gate.on_segmenter(utterance(start - 0.05, tone(3.0)))
    assert len(of(out, WakeTurn)) == 1


def test_follow_up_window_after_a_reply():
    gate = new_gate()
    say(gate, utterance(10.0, tone(0.6), quiet(0.2), tone(1.0)), detections=(10.8,))
    assert gate.replying
    # While the reply runs, speech is not a turn.
    assert of(say(gate, utterance(13.0, tone(1.0))), WakeTurn) == []
    out = gate.reply_ended(20.0)
    assert [(m.state, m.reason, m.until_t) for m in out] == [(WakeState.LISTENING, "follow_up", 20.0 + FOLLOW_UP_S)]
    follow = say(gate, utterance(22.0, tone(1.0)))
    turns = of(follow, WakeTurn)
    assert len(turns) == 1 and turns[0].via == "follow_up" and turns[0].wake is None
    # After that reply, the window opens again, and speech after it needs the wake word again.
    gate.reply_ended(30.0)
    assert gate.tick(30.0 + FOLLOW_UP_S + 0.1)[0].reason == "timeout"
    assert of(say(gate, utterance(30.0 + FOLLOW_UP_S + 0.5, tone(1.0))), WakeTurn) == []


def test_follow_up_zero_means_the_wake_word_is_always_needed():
    gate = new_gate(follow_up_s=0.0)
    say(gate, utterance(10.0, tone(0.6), quiet(0.2), tone(1.0)), detections=(10.8,))
    assert gate.reply_ended(20.0) == [] and gate.state is WakeState.WAITING and not gate.replying
    assert of(say(gate, utterance(20.5, tone(1.0))), WakeTurn) == []


def test_the_wake_word_during_a_reply_stops_it_and_then_listens():
    gate = new_gate()
    say(gate, utterance(10.0, tone(0.6), quiet(0.2), tone(1.0)), detections=(10.8,))
    stop = gate.on_detection(wake(15.0))
    assert [type(m) for m in stop] == [StopReply, StateChanged] and stop[0].detection.t == 15.0
    assert not gate.replying and gate.state is WakeState.LISTENING
    # The reply's end, reported after the stop, must not open a follow-up window on top.
    assert gate.reply_ended(15.2) == []
    # A question after the stop is the next turn.
    assert len(of(say(gate, utterance(16.0, tone(1.0))), WakeTurn)) == 1


def test_the_wake_word_and_a_question_over_a_reply_stop_it_and_ask():
    gate = new_gate()
    say(gate, utterance(10.0, tone(0.6), quiet(0.2), tone(1.0)), detections=(10.8,))
    utt = utterance(15.0, tone(0.6, seed=5), quiet(0.2), tone(1.0, seed=6))
    out = say(gate, utt, detections=(15.8,))
    assert of(out, StopReply) and len(of(out, WakeTurn)) == 1 and of(out, WakeTurn)[0].via == "wake"


def test_a_wake_word_inside_a_follow_up_is_cut_off_too():
    gate = new_gate()
    say(gate, utterance(10.0, tone(0.6), quiet(0.2), tone(1.0)), detections=(10.8,))
    gate.reply_ended(20.0)
    utt = utterance(21.0, tone(0.6, seed=7), quiet(0.2), tone(1.0, seed=8))
    turn = of(say(gate, utt, detections=(21.8,)), WakeTurn)[0]
    assert turn.via == "wake" and turn.utterance.start_t >= 21.6


def test_wake_word_said_twice_the_turn_follows_the_last_one():
    gate = WakeGate(listen_s=LISTEN_S, follow_up_s=0.0)
    utt = utterance(10.0, tone(0.6), quiet(0.3), tone(0.6, seed=9), quiet(0.2), tone(1.0, seed=10))
    turn = of(say(gate, utt, detections=(10.8, 11.7)), WakeTurn)[0]
    assert 11.5 <= turn.utterance.start_t <= 11.71, turn.utterance.start_t


def test_a_forwarded_pause_that_turns_out_to_be_the_wake_word_alone_is_voided():
    gate = new_gate()
    say(gate, utterance(10.0, tone(0.6), quiet(0.2), tone(1.0)), detections=(10.8,))
    gate.reply_ended(20.0)
    # In the follow-up window someone says the wake word alone; the detection lands after the pause.
    utt = utterance(21.0, tone(0.6))
    out = gate.on_segmenter(SpeechStarted(21.05))
    out += gate.on_segmenter(SpeechPaused(utt))
    out += gate.on_detection(wake(21.75))
    out += gate.on_segmenter(utt)
    kinds = [type(m) for m in out if not isinstance(m, StateChanged)]
    assert kinds == [SpeechStarted, SpeechPaused, SpeechResumed, SpeechDiscarded]
    assert gate.state is WakeState.LISTENING  # and the question may follow


def test_random_sequences_keep_the_message_invariants():
    """Every forwarded SpeechStarted is followed by exactly one WakeTurn or SpeechDiscarded before the next
    one; a forwarded SpeechPaused is voided (SpeechResumed) unless its utterance is the turn's, as is."""
    rng = random.Random(13)
    for _ in range(300):
        gate = WakeGate(listen_s=rng.choice([1.0, 3.0]), follow_up_s=rng.choice([0.0, 2.0]))
        t = 0.0
        open_started = False
        paused: Utterance | None = None
        for _ in range(12):
            t += rng.uniform(0.1, 4.0)
            parts = [tone(rng.uniform(0.2, 0.8), seed=rng.randrange(99))]
            if rng.random() < 0.6:
                parts += [quiet(rng.uniform(0.0, 0.4)), tone(rng.uniform(0.1, 1.5), seed=rng.randrange(99))]
            utt = utterance(t, *parts)
            events: list = [("seg", SpeechStarted(t + 0.05))]
            if rng.random() < 0.5:
                events.append(("wake", wake(rng.uniform(t, utt.end_t + 0.3))))
            if rng.random() < 0.5:
                events.insert(rng.randrange(1, len(events) + 1), ("seg", SpeechPaused(utt)))
            events.append(("seg", utt))
            if rng.random() < 0.3:
                events.append(("reply", utt.end_t + rng.uniform(0.5, 3.0)))
            for kind, ev in events:
                if kind == "seg":
                    out = gate.on_segmenter(ev)
                elif kind == "wake":
                    out = gate.on_detection(ev)
                else:
                    out = gate.reply_ended(ev)
                    t = max(t, ev)
                for m in out:
                    if isinstance(m, SpeechStarted):
                        assert not open_started
                        open_started = True
                    elif isinstance(m, SpeechPaused):
                        assert open_started
                        paused = m.utterance
                    elif isinstance(m, SpeechResumed):
                        assert paused is not None
                        paused = None
                    elif isinstance(m, WakeTurn | SpeechDiscarded):
                        assert open_started
                        if isinstance(m, WakeTurn) and paused is not None:
                            assert m.utterance is paused
                        if isinstance(m, SpeechDiscarded):
                            assert paused is None
                        open_started, paused = False, None
                        if isinstance(m, WakeTurn):
                            assert m.utterance.chunks and m.utterance.end_t - m.utterance.start_t > 0
            assert not open_started  # each utterance was settled
            t = utt.end_t + 0.3


def test_same_breath_a_model_that_fires_before_its_word_ends_is_cut_after_the_word_not_inside_it():
    """hey_mycroft's score crosses the cutoff about when "mycroft" ends, sometimes before (measured median 50 ms
    after): the quiet stretch between "hey" and "mycroft" must not be taken for the end of the wake word."""
    gate = new_gate()
    utt = utterance(
        10.0, quiet(0.3), tone(0.25, seed=2), quiet(0.1), tone(0.4, seed=4), quiet(0.12), tone(1.2, seed=3)
    )  # "hey" · "mycroft" · gap · question
    word_end_t = 10.0 + 0.3 + 0.25 + 0.1 + 0.4
    gate.on_segmenter(SpeechStarted(utt.start_t + 0.05))
    gate.on_detection(Detection(t=word_end_t - 0.03, word="hey_mycroft", probability=0.97))
    turns = of(gate.on_segmenter(utt), WakeTurn)
    assert len(turns) == 1 and turns[0].via == "wake"
    cut_t = turns[0].utterance.start_t
    assert word_end_t <= cut_t <= word_end_t + 0.12 + 0.001, cut_t - word_end_t
