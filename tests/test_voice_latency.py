"""Voice-to-voice latency: ``reply_done.voice_latency_s`` = end of speech (capture clock) → the first sample of the
spoken reply at the output device (PortAudio's DAC time), null when not spoken; the TUI and plain mode show it.

The App test runs real parts: espeak-ng speech played into a PulseAudio null sink whose monitor is the
microphone, the tiny random-weight Qwen2-Audio (its replies are noise text, spoken anyway), the real Speaker
playing into a second sink ("headset") whose monitor we record. The figure is checked against that recording:
the reply's sound must start where speech_end_t + voice_latency_s says, within the recorder's jitter.
Latency targets are benchmarks (scripts/bench_latency.py), not asserted here.
"""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from support.app_devices import collect, make_speaker, mic_app, tiny_config
from support.pulse import MonitorRecorder
from support.speech import speech_wav

from voiceassist import events as ev
from voiceassist.app import App
from voiceassist.config import Config, TtsConfig
from voiceassist.openers import open_backend
from voiceassist.plain import PlainPrinter
from voiceassist.speech import Speaker
from voiceassist.tui.statusbar import StatusModel
from voiceassist.tui.view import Conversation, plain_text


def config(**overrides) -> Config:
    return tiny_config({"generation.max_new_tokens": 12, "tts.enabled": True, "tts.rate": 260}, **overrides)


def onset(audio: np.ndarray, t0: float, after: float) -> float | None:
    """Capture-clock time of the first 10 ms frame louder than -40 dBFS RMS at or after ``after``."""
    n = len(audio) // 160
    lv = np.sqrt(np.mean(audio[: n * 160].reshape(n, 160) ** 2, axis=1))
    start = max(0, int((after - t0) * 100))
    loud = np.flatnonzero(lv[start:] > 0.01)
    return None if not len(loud) else t0 + (start + loud[0]) / 100


@pytest.mark.pulse
@pytest.mark.slow
def test_voice_latency_is_where_the_reply_is_heard(pulse, tmp_path, monkeypatch):
    pulse.load_sink("va_out")
    monkeypatch.setenv("PULSE_SINK", "va_out")  # the Speaker plays into the "headset"; the mic hears va_sink
    cfg = config()
    backend = open_backend(cfg)
    speaker = make_speaker(cfg, ready_s=20)
    app = mic_app(cfg, backend, speaker)
    wav = speech_wav(tmp_path / "q.wav", 0.3, "What is the weather like today?", 0.3)
    rec = MonitorRecorder(pulse, "va_out")
    app.start()
    try:
        pulse.play(str(wav))
        evs = collect(app, 60, lambda e: any(x.kind == "reply_done" for x in e))
        # then a typed turn: it has no end of speech, so no voice latency either
        app.submit_text("And tomorrow?")
        evs += collect(app, 60, lambda e: sum(x.kind == "reply_done" for x in e) == 2)
        time.sleep(0.5)
    finally:
        app.stop()
        audio = rec.stop()
    utt = next(e for e in evs if e.kind == "utterance")
    done = [e for e in evs if e.kind == "reply_done"]
    assert len(done) == 2, [(e.kind, getattr(e, "message", "")) for e in evs if e.kind != "token"]
    first = done[0]
    heard = onset(audio, rec.t0, utt.speech_end_t)
    print(f"speech_end_t={utt.speech_end_t:.3f} latency={first.latency_s} voice={first.voice_latency_s} heard={heard}")
    assert first.voice_latency_s is not None and first.latency_s is not None
    # The first sound comes after the first token (its sentence had to be decoded and synthesised) ...
    assert first.voice_latency_s > first.latency_s
    # ... and is where the recording of the output sink has it: parec adds ~10-30 ms, espeak starts with a few
    # ms of near-silence; PulseAudio's reported latency may be off by a block or two.
    assert heard is not None
    assert -0.08 < heard - (utt.speech_end_t + first.voice_latency_s) < 0.2
    assert first.to_json()["voice_latency_s"] == round(first.voice_latency_s, 6)
    assert done[1].voice_latency_s is None and app.history()[0]["voice_latency_s"] == round(first.voice_latency_s, 4)


def test_first_sound_is_none_at_once_when_nothing_will_sound(pulse):
    sp = Speaker(TtsConfig(rate=300))
    try:
        assert sp.wait_ready(20)
        sp.feed(1, "😀 🎉")  # nothing speakable
        sp.end_reply(1)
        t = time.monotonic()
        assert sp.first_sound(1, 3.0) is None
        assert time.monotonic() - t < 1.0  # not the timeout: it knew
        sp.feed(2, "A real sentence.")
        sp.end_reply(2)
        t2 = sp.first_sound(2, 5.0)
        assert t2 is not None and t2 == sp.first_heard(2)
        assert sp.first_sound(3, 0.05) is None  # never fed: the timeout
    finally:
        sp.close()


def test_plain_and_tui_show_the_voice_latency():
    done = ev.ReplyDone(
        turn=1, text="Hi.", n_tokens=2, tok_per_s=20.0, ttft_s=0.05, latency_s=0.612, voice_latency_s=0.734
    )
    out = io.StringIO()
    PlainPrinter(out).handle(done)
    assert "end of speech → first token 612 ms · → first sound 734 ms" in out.getvalue()
    conv = Conversation()
    conv.apply(ev.UtteranceEvent(turn=1, durations=(1.0,)))
    conv.apply(ev.ReplyStart(turn=1, ttft_s=0.05, latency_s=0.612))
    conv.apply(done)
    assert "612 ms after speech · spoken 734 ms after speech · 2 tokens" in plain_text(conv.window(100, 24, 0)[0])
    s = StatusModel(mode="handsfree", silence_warning_s=5.0, model="m", device="d")
    s.apply(ev.ReplyStart(turn=1, ttft_s=0.05, latency_s=0.612))
    s.apply(done)
    assert "latency 612 ms · voice 734 ms" in plain_text([s.line1(100, 0.0)])
    silent = ev.ReplyDone(turn=2, text="x", n_tokens=1, tok_per_s=1.0, ttft_s=0.1, latency_s=0.5)
    s.apply(silent)
    assert "voice" not in plain_text([s.line1(100, 0.0)])
    out = io.StringIO()
    PlainPrinter(out).handle(silent)
    assert "first sound" not in out.getvalue()


# ---- the speculative first sentence on the speech side ------------------------------------------------------


def wait_for(cond, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.005)
    return bool(cond())


@pytest.mark.pulse
def test_a_prepared_sentence_is_silent_until_fed_then_plays_without_synthesis(pulse):
    sp = Speaker(TtsConfig(rate=300))
    try:
        assert sp.wait_ready(20)
        rec = MonitorRecorder(pulse)
        assert wait_for(lambda: len(rec.chunks) > 10, 10), "parec did not start recording"
        sp.prepare("Here is the first sentence of the answer.")
        assert wait_for(lambda: sp.prepared_count == 1, 10)
        assert not sp.speaking()  # held, not speaking: the microphone is not muted for it
        time.sleep(0.5)
        quiet = rec.stop()
        assert len(quiet) > 3200 and np.max(np.abs(quiet)) < 0.01, "a prepared sentence must not play before it is fed"
        t_fed = time.monotonic()
        sp.feed(1, "Here is the first sentence of the answer.")
        sp.feed(1, " And the rest of it.")
        sp.end_reply(1)
        heard = sp.first_sound(1, 5.0)
        print(f"fed → first sound {1000 * (heard - t_fed):.0f} ms (DAC time)")
        assert heard is not None and sp.prepared_used == 1
        assert wait_for(lambda: not sp.speaking(), 15)
        assert sp.spoken_text(1) == "Here is the first sentence of the answer. And the rest of it."
        # Rolled back (speech resumed): dropped, and the running language it set is put back.
        sp.prepare("Bonjour tout le monde, voici la réponse.")
        assert wait_for(lambda: sp.prepared_count == 2, 10)
        sp.discard_prepared()
        sp.feed(2, "Oui.")  # an unsure word follows the running language: English (reply 1), not French
        sp.end_reply(2)
        assert wait_for(lambda: not sp.speaking() and sp.voice_choices(2), 15)
        assert sp.prepared_used == 1 and sp.voice_choices(2)[0][1].language == "en"
        # A different first sentence than the one prepared: it is synthesised as usual, the prepared one dropped.
        sp.prepare("Something else entirely.")
        assert wait_for(lambda: sp.prepared_count == 3, 10)
        sp.feed(3, "Not what was prepared.")
        sp.end_reply(3)
        assert sp.first_sound(3, 5.0) is not None and sp.prepared_used == 1
        # stop() drops a prepared sentence too.
        sp.prepare("Dropped by a stop.")
        assert wait_for(lambda: sp.prepared_count == 4, 10)
        sp.stop()
        sp.feed(4, "Dropped by a stop.")
        sp.end_reply(4)
        assert sp.first_sound(4, 5.0) is not None and sp.prepared_used == 1
    finally:
        sp.close()


@pytest.mark.pulse
@pytest.mark.slow
def test_the_app_speaks_the_speculated_first_sentence_and_the_conversation_is_unchanged(pulse, tmp_path):
    """A fast file (as `voiceassist chat --from-file F --fast`), speech on: every turn's first sentence is
    decoded and synthesised during the hang-over and played from there; the replies are those of a run with
    the first-sentence speculation off (greedy tiny model)."""
    from voiceassist.audio.sources import FileSource

    questions = ["What is the weather like today?", "Tell me a joke."]
    wav = speech_wav(tmp_path / "conversation.wav", 0.5, *(p for q in questions for p in (q, 3.5)))
    runs = {}
    for ahead in (True, False):
        # A long hang-over (2.5 s) leaves the speculation time even on a loaded 2-core machine (load average 10
        # here has stretched the tiny model's prefill + 8 tokens to over 1 s).
        overrides = {"tts.speculative_first_sentence": ahead, "generation.max_new_tokens": 8, "vad.hangover_ms": 2500}
        cfg = config(**overrides)
        backend = open_backend(cfg)
        speaker = make_speaker(cfg, ready_s=20)
        app = App(cfg, FileSource(str(wav), realtime=False), backend, speaker=speaker)
        evs: list = []
        app.start()
        try:
            evs = collect(app, 120, lambda e: sum(x.kind == "reply_done" for x in e) == len(questions))
            assert app.done.wait(30)
        finally:
            app.stop()
            speaker.close()
        done = [e for e in evs if e.kind == "reply_done"]
        runs[ahead] = (
            [h["reply"] for h in app.history()],
            [e.voice_latency_s for e in done],
            app.first_sentences_prepared,
            speaker.prepared_used,
        )
        errors = [e.message for e in evs if e.kind == "error"]
        print(ahead, runs[ahead], app.speculations_started, [h.get("speculated") for h in app.history()], errors)
    replies, voice, prepared, used = runs[True]
    assert replies == runs[False][0] and all(replies)  # the same conversation
    assert prepared == used == len(questions)  # every first sentence was ready and played from the hang-over
    assert runs[False][2] == runs[False][3] == 0
    assert all(v is not None for v in voice) and all(v is not None for v in runs[False][1])
