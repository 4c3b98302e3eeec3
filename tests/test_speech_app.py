"""The App speaking its replies over real PulseAudio devices: no self-answering loop, and barge-in.

Real parts throughout: the tiny Qwen2-Audio (random weights, so its replies are noise text, which espeak-ng
says anyway), the real Speaker (pyttsx3 + espeak-ng worker process, PortAudio playback), PortAudio capture
from a null sink's monitor, and espeak-ng speech as the user.

- Loopback: the Speaker plays into the sink whose monitor IS the microphone, as with loudspeakers and no echo
  cancellation. Over several replies the assistant must never take its own voice for a user turn.
- Headset: the Speaker plays into a second sink the microphone does not hear; the user talks over it. With
  ``tts.barge_in`` the playback stops, the history keeps only what was heard (marked interrupted) and the
  user's speech is the next turn.
- A stop before the reply's first sound: the speech stage speaks none of the text that still comes.

(Merged from the app engineer's tests/test_app_speech.py and the speech engineer's version of these two tests:
every distinct assertion of both is kept, one run of each scenario.)
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from support.app_devices import collect, fresh, make_speaker, mic_app, tiny_config
from support.pulse import MonitorRecorder
from support.speech import speech_wav

from voiceassist.config import Config
from voiceassist.openers import open_backend

pytestmark = [pytest.mark.pulse, pytest.mark.slow]


def config(**overrides) -> Config:
    values = {
        "generation.max_new_tokens": 20,
        "tts.enabled": True,
        "tts.rate": 240,
        "audio.echo_cancel": "off",  # these are the half-duplex tests (full duplex: tests/test_duplex_app.py)
    }
    return tiny_config(values, **overrides)


@pytest.fixture(scope="module")
def session():
    return open_backend(config())


def question(tmp_path, text: str, name: str) -> str:
    return str(speech_wav(tmp_path / f"{name}.wav", 0.2, text, 0.3))


def test_loopback_the_assistant_never_answers_its_own_voice(pulse, session, tmp_path):
    cfg = config()
    fresh(session, cfg)  # the module's session is shared: this test's reply length
    speaker = make_speaker(cfg)
    app = mic_app(cfg, session, speaker)
    questions = ["What time is it?", "And the weather?", "Thank you."]
    evs: list = []
    app.start()
    try:
        for n, text in enumerate(questions, 1):
            pulse.play(question(tmp_path, text, f"q{n}"))  # into the sink the microphone hears
            evs += collect(app, 40, lambda e, n=n: any(x.kind == "reply_done" and x.turn == n for x in e))
            # The reply is spoken into the same sink, i.e. into the microphone; wait until it has been
            # heard and the echo tail plus the segmenter's hang-over have passed.
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and (speaker.first_heard(n) is None or speaker.speaking()):
                evs += collect(app, 0.05)
            if speaker.first_heard(n) is None:  # say what happened (pytest shows this output on failure)
                print(
                    f"echo_ignored={app.echo_ignored} speaking={speaker.speaking()} "
                    f"played={[(round(a, 2), round(b, 2)) for a, b in speaker._player.intervals()]}"
                )
                for e in evs:
                    if e.kind != "token":
                        print(
                            round(e.t, 2),
                            e.kind,
                            getattr(e, "turn", ""),
                            getattr(e, "state", ""),
                            getattr(e, "detail", ""),
                            repr(getattr(e, "text", ""))[:60],
                            getattr(e, "message", ""),
                        )
            assert speaker.first_heard(n) is not None, f"reply {n} was never played"
            evs += collect(app, (cfg.tts.echo_tail_ms + cfg.vad.hangover_ms) / 1000 + 0.6)
    finally:
        app.stop()
    turns = [e.turn for e in evs if e.kind == "utterance"]
    assert turns == [1, 2, 3], turns  # three questions, three turns: no reply ever became a turn
    assert [e.turn for e in evs if e.kind == "reply_done"] == [1, 2, 3]
    assert app.echo_ignored >= 2  # the microphone did hear the replies as speech, and they were dropped
    assert not any(e.kind == "interrupted" for e in evs)  # barge-in is off by default: nothing cut
    assert [h["interrupted"] for h in app.history()] == [False, False, False]
    assert any(e.kind == "status" and e.state == "speaking" for e in evs)  # the status line showed it


def test_barge_in_stops_playback_and_generation_and_keeps_only_what_was_heard(pulse, session, tmp_path, monkeypatch):
    pulse.load_sink("va_out")
    monkeypatch.setenv("PULSE_SINK", "va_out")  # the Speaker's stream goes to the "headset", not the mic sink
    # A long reply (400 tokens: many seconds of decoding), so the user talks over it while it is still being
    # generated as well as spoken: the barge-in has to stop both.
    cfg = config(**{"tts.barge_in": True, "tts.rate": 110, "generation.max_new_tokens": 400})
    fresh(session, cfg)
    speaker = make_speaker(cfg)
    app = mic_app(cfg, session, speaker)
    user = question(tmp_path, "Stop please, I have another question.", "barge")
    rec = MonitorRecorder(pulse, "va_out")
    app.start()
    try:
        app.submit_text("Tell me a long story.")
        # Wait until the reply's speech has been playing for a while (and still is).
        evs = collect(app, 40, lambda e: speaker.first_heard(1) is not None)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (
            speaker.first_heard(1) is not None
            and speaker.speaking()
            and time.monotonic() - speaker.first_heard(1) > 1.0
        ):
            evs += collect(app, 0.05)
        assert speaker.speaking(), "the reply's speech ended before the user could talk over it"
        played_at = time.monotonic()
        pulse.play(user, wait=False)  # the user talks over it, into the microphone
        evs += collect(app, 30, lambda e: any(x.kind == "interrupted" for x in e))
        inter_t = time.monotonic()
        evs += collect(app, 40, lambda e: any(x.kind == "reply_start" and x.turn == 2 for x in e))
        # the answer to turn 2 begins to be spoken (or not within the wait: the quiet stretch then runs to now)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and speaker.first_heard(2) is None:
            evs += collect(app, 0.05)
        second_heard = speaker.first_heard(2) or time.monotonic()
    finally:
        app.stop()
        audio = rec.stop()
    inter = [e for e in evs if e.kind == "interrupted"]
    assert len(inter) == 1 and inter[0].reason == "barge_in" and inter[0].turn == 1, [
        (e.kind, getattr(e, "state", ""), getattr(e, "message", "")) for e in evs if e.kind != "token"
    ]
    # the user's speech did it (the assistant's own voice goes to va_out, which the microphone does not hear)
    assert inter[0].t >= played_at + 0.3
    done1 = next(e for e in evs if e.kind == "reply_done" and e.turn == 1)
    kept = inter[0].kept_text
    # The history keeps exactly what the speaker says was heard: a prefix, shorter than the reply.
    assert kept == speaker.spoken_text(1)
    assert done1.text.startswith(kept) and len(kept) < len(done1.text)
    first = app.history()[0]
    assert first["interrupted"] and first["reply"] == kept
    assert session.turns[0].interrupted  # the model's own history was cut back too
    # The user's speech became turn 2 (one audio of about its length), and was answered.
    utt2 = next(e for e in evs if e.kind == "utterance" and e.turn == 2)
    assert len(utt2.durations) == 1 and 1.0 < utt2.durations[0] < 5.0
    assert app.history()[1]["kind"] == "audio"
    # The output sink went quiet after the barge-in, until the answer to turn 2 began.
    lv = np.sqrt(np.mean(audio[: len(audio) // 160 * 160].reshape(-1, 160) ** 2, axis=1))
    a = int((inter_t - rec.t0) * 100) + 20
    b = int((second_heard - rec.t0) * 100) - 5
    assert np.sum(lv[: a - 20] > 0.01) > 30  # it was speaking before
    assert b > a and np.all(lv[a:b] < 0.01), np.flatnonzero(lv[a:b] >= 0.01)[:5]


def test_text_of_a_reply_stopped_before_its_first_sound_is_never_spoken(pulse):
    """A stop while the reply is still thinking (the wake word, the key): the model stage may hand out a piece or
    two before it sees the cancel. The speech stage speaks none of it — not then, and not as "last words" before
    the next reply (the speaker's sentence splitter would have held the half sentence) — and the next reply is
    spoken as usual. The speech stage alone, fed as the model stage feeds it, with the real Speaker."""
    import queue
    import threading

    from voiceassist.pipeline.messages import BeginReply, EndOfReply, SpeakText, StopSpeaking
    from voiceassist.pipeline.speech import SpeechStage

    cfg = config()
    speaker = make_speaker(cfg)
    stage = SpeechStage(
        cfg,
        speaker,
        emit=lambda _e: None,
        clock=time.monotonic,
        model_control=queue.SimpleQueue(),
        cancel_reply=lambda _reason: None,
        on_change=lambda: None,
        stop=threading.Event(),
    )
    try:
        stage.send(BeginReply(1))
        stage.send(StopSpeaking("wake", truncate=False))  # nothing of reply 1 fed yet: the model is thinking
        stage.send(SpeakText(1, "This came after the stop. And half a"))
        time.sleep(0.3)  # a spoken sentence would have been synthesised and started by now
        heard1 = stage.heard(1)  # what the model stage asks as it finishes reply 1
        stage.send(BeginReply(2))
        stage.send(SpeakText(2, "The next reply."))
        stage.send(EndOfReply(2))
        first2 = speaker.first_sound(2, 10.0)
        deadline = time.monotonic() + 10
        while speaker.speaking() and time.monotonic() < deadline:
            time.sleep(0.02)
        heard = (heard1, speaker.spoken_text(1), speaker.first_heard(1), stage.heard(2))
    finally:
        speaker.close()
    assert first2 is not None, "the next reply was not spoken"
    assert heard == ("", "", None, "The next reply."), heard


def _speech_stage(cfg: Config, speaker, control, cancelled: list):
    import threading

    from voiceassist.pipeline.speech import SpeechStage

    return SpeechStage(
        cfg,
        speaker,
        emit=lambda _e: None,
        clock=time.monotonic,
        model_control=control,
        cancel_reply=cancelled.append,
        on_change=lambda: None,
        stop=threading.Event(),
    )


def test_a_stop_with_two_replies_queued_cuts_the_one_heard_and_the_next_to_nothing(pulse):
    """A turn typed while the last reply still plays queues its reply behind that one. A stop (the wake word,
    the key) then cuts the reply playing back to what was heard and the queued one to nothing, newest first; the
    speech stage alone, fed as the model stage feeds it, with the real Speaker. (Before, only the last turn was
    cut, to "", and the one playing kept all its text.)"""
    import queue

    from voiceassist.pipeline.messages import BeginReply, EndOfReply, SpeakText, StopSpeaking

    cfg = config()
    speaker = make_speaker(cfg)
    control: queue.SimpleQueue = queue.SimpleQueue()
    cancelled: list = []
    stage = _speech_stage(cfg, speaker, control, cancelled)
    one = "The first reply has several sentences. It goes on for a while. There is more of it. This is its end."
    try:
        stage.send(BeginReply(1))
        stage.send(SpeakText(1, one))
        stage.send(EndOfReply(1))
        stage.send(BeginReply(2))
        stage.send(SpeakText(2, "The second reply waits behind the first."))
        stage.send(EndOfReply(2))
        first = speaker.first_sound(1, 10.0)
        assert first is not None, "reply 1 was not spoken"
        while time.monotonic() < first + 1.0:
            time.sleep(0.02)
        assert speaker.speaking() and speaker.first_heard(2) is None, "reply 1 ended before the stop"
        stage.send(StopSpeaking("wake", truncate=True))
        cuts = []
        while not control.empty():
            cuts.append(control.get_nowait())
    finally:
        speaker.close()
    assert [(c.turn, c.reason) for c in cuts] == [(2, "wake"), (1, "wake")], cuts
    assert cuts[0].spoken == ""
    heard = cuts[1].spoken
    assert heard and one.startswith(heard) and len(heard) < len(one), heard
    assert cancelled == ["wake"]


def test_the_key_over_two_queued_replies_keeps_what_was_heard_of_each(pulse, session, monkeypatch):
    """The App (push-to-talk mode, the tiny model, the real Speaker): a typed turn while reply 1 still plays,
    then the key. The history and the model's own turns keep what was heard of reply 1 and nothing of reply 2,
    both marked interrupted with one ``interrupted`` each; the next turn is answered as usual."""
    pulse.load_sink("va_out")
    monkeypatch.setenv("PULSE_SINK", "va_out")
    cfg = config(**{"ui.mode": "ptt", "tts.rate": 110, "generation.max_new_tokens": 60})
    fresh(session, cfg)
    speaker = make_speaker(cfg)
    app = mic_app(cfg, session, speaker)
    app.start()
    try:
        app.submit_text("Tell me a story.")
        evs = collect(app, 40, lambda e: any(x.kind == "reply_done" and x.turn == 1 for x in e))
        app.submit_text("And another one.")  # reply 1 still plays: reply 2 queues behind it
        evs += collect(app, 40, lambda e: any(x.kind == "reply_done" and x.turn == 2 for x in e))
        playing = speaker.speaking() and speaker.first_heard(2) is None and speaker.first_heard(1) is not None
        app.ptt_press()
        app.ptt_release()
        evs += collect(app, 10, lambda e: sum(x.kind == "interrupted" for x in e) >= 2)
        evs += collect(app, 1.0)
        history = app.history()
        app.submit_text("Are you there?")
        evs += collect(app, 40, lambda e: any(x.kind == "reply_done" and x.turn == 3 for x in e))
    finally:
        app.stop()
        speaker.close()
    assert playing, "reply 1 ended (or reply 2 began) before the key: nothing queued to test"
    done = {e.turn: e for e in evs if e.kind == "reply_done"}
    inter = [(e.turn, e.reason, e.kept_text) for e in evs if e.kind == "interrupted"]
    assert sorted(t for t, _, _ in inter) == [1, 2] and {r for _, r, _ in inter} == {"ptt"}, inter
    kept = dict((t, k) for t, _, k in inter)
    assert kept[2] == "" and kept[1] and done[1].text.startswith(kept[1]) and len(kept[1]) < len(done[1].text)
    assert [(h["reply"], h["interrupted"]) for h in history] == [(kept[1], True), ("", True)]
    turns = session.turns
    # the model keeps the longest run of its reply tokens that was heard: a prefix of what the speaker said
    assert turns[0].interrupted and turns[0].reply_text and kept[1].startswith(turns[0].reply_text)
    assert turns[1].interrupted and turns[1].reply_ids == ()
    assert 3 in done and not done[3].interrupted
