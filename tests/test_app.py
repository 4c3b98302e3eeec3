"""The App end to end with real parts: espeak speech through FileSource / a PulseAudio device, the VAD, and the
tiny Qwen2-Audio (random weights: its replies are noise, every code path is real).

Fakes, named as such, only where no real part can fail on cue: ``EscapeEmittingFakeBackend`` (a model that
emits terminal escape sequences) and the kiosk's ``FaultInjectingBackend`` (a real session that fails mid-reply);
and ``support.app_devices.HeldPrefill`` (a real session held in its prefill: a slow model).
"""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from support.app_devices import HeldPrefill
from support.app_run import SR, app_config, app_wavs, collect, finished, kinds, started_app
from support.speech import silence, speech_16k

from voiceassist.app import App
from voiceassist.audio.cutting import sound_bounds, split_chunks, trim_silence
from voiceassist.audio.sources import FileSource, MicrophoneSource
from voiceassist.backend import ReplyResult, UserTurn
from voiceassist.config import Config
from voiceassist.events import AudioBlock, Level
from voiceassist.kiosk.faults import FaultInjectingBackend, FaultPlan
from voiceassist.openers import open_backend
from voiceassist.pipeline.frontend import GateDecision, ProcessorChain
from voiceassist.replytext import StreamStripper

HANGOVER_S = Config().vad.hangover_ms / 1000


@pytest.fixture(scope="module")
def session():
    """One tiny-model session for the module (loading it is the slow part); reset before each use."""
    return open_backend(app_config())


@pytest.fixture(scope="module")
def wavs(tmp_path_factory) -> dict[str, Path]:
    return app_wavs(tmp_path_factory.mktemp("app-speech"))


def test_utterances_become_turns_with_replies_in_order(session, wavs):
    app = started_app(app_config(), FileSource(str(wavs["two"]), realtime=False), session)
    try:
        evs = collect(app, finished(app))
    finally:
        app.stop()
    turn_events = kinds(evs, "utterance", "reply_start", "reply_done")
    assert turn_events == ["utterance", "reply_start", "reply_done"] * 2
    for turn in (1, 2):
        mine = [e for e in evs if getattr(e, "turn", None) == turn]
        assert mine[0].kind == "utterance" and mine[-1].kind == "reply_done"
        utt, start, done = mine[0], next(e for e in mine if e.kind == "reply_start"), mine[-1]
        assert len(utt.durations) == 1 and 1.0 < utt.durations[0] < 4.0 and utt.speech_end_t is not None
        assert done.text == "".join(e.text for e in mine if e.kind == "token")
        assert done.n_tokens > 0 and done.tok_per_s > 0 and done.context_tokens > 0
        # End of speech → first token counts the hang-over (the audio time the segmenter waited) even though
        # the fast file delivered that audio at once, plus the real processing time.
        assert start.latency_s is not None and start.latency_s >= HANGOVER_S
        assert start.latency_s == pytest.approx(start.t - utt.speech_end_t, abs=1e-3)
        assert start.latency_s - start.ttft_s >= HANGOVER_S - 0.05
    assert [h["turn"] for h in app.history()] == [1, 2]
    assert all(len(h["audios"]) == 1 and h["reply"] for h in app.history())


def test_speculative_prefill_during_the_hang_over_gives_the_same_replies(session, wavs):
    """With speculation the worker prefills each utterance during its hang-over (a fast file is paced in real
    time from the pause on), and the replies are the ones computed without it."""
    replies = {}
    for spec in (False, True):
        app = started_app(
            app_config(**{"model.speculative_prefill": spec}), FileSource(str(wavs["resume"]), realtime=False), session
        )
        try:
            evs = collect(app, finished(app))
        finally:
            app.stop()
        replies[spec] = [(e.text, e.context_tokens) for e in evs if e.kind == "reply_done"]
        # Deterministic on any machine speed: a fast file waits until the worker has taken each speculation
        # before it paces the hang-over, and the worker finishes a speculation before it takes the turn.
        assert [h["speculated"] for h in app.history()] == [spec, spec]
        # turn 1 paused mid-way (a speculation, rolled back when speech resumed), then at its end; turn 2 once
        assert (app.speculations_started >= 3) if spec else app.speculations_started == 0
    assert len(replies[True]) == 2 and replies[True] == replies[False]


def test_text_and_file_turns(session, wavs):
    app = started_app(app_config(), FileSource(str(wavs["silence"]), realtime=False), session, stay=True)
    try:
        app.submit_text("Hello there")
        evs = collect(app, lambda e: kinds(e, "reply_done") == ["reply_done"])
        app.submit_file(str(wavs["one"]), "What is said here?")
        app.submit_file(str(wavs["one"]) + ".missing")
        app.submit_text("Thanks")
        evs += collect(app, lambda e: len(kinds(e, "reply_done")) == 2)
    finally:
        app.stop()
    utts = [e for e in evs if e.kind == "utterance"]
    assert utts[0].text == "Hello there" and utts[0].durations == () and utts[0].speech_end_t is None
    assert utts[1].text == "What is said here?" and utts[1].file == "one.wav" and len(utts[1].durations) == 1
    assert utts[2].text == "Thanks"  # the missing file was reported and skipped
    errors = [e for e in evs if e.kind == "error"]
    assert len(errors) == 1 and errors[0].source == "audio" and "one.wav.missing" in errors[0].message
    assert not app.done.is_set()  # --stay
    hist = app.history()
    assert [h["kind"] for h in hist] == ["text", "file", "text"]
    assert hist[1]["file"].endswith("one.wav") and len(hist[1]["audios"]) == 1


def test_cancel_mid_reply_then_the_next_turn_works(session, wavs, monkeypatch):
    monkeypatch.setattr(session, "_end_ids", set())  # replies run to max_new_tokens: still going when cancelled
    app = started_app(
        app_config(**{"generation.max_new_tokens": 2000}),
        FileSource(str(wavs["silence"]), realtime=False),
        session,
        stay=True,
    )
    try:
        app.submit_text("Tell me everything")
        evs = collect(app, lambda e: len(kinds(e, "token")) >= 3)
        assert app.busy
        app.cancel()
        evs += collect(app, lambda e: "reply_done" in kinds(e, "reply_done"))
        app.submit_text("Short one")
        more = collect(app, lambda e: "reply_start" in kinds(e, "reply_start"))
        app.cancel()
        more += collect(app, lambda e: "reply_done" in kinds(e, "reply_done"))
    finally:
        app.stop()
    interrupted = [e for e in evs if e.kind == "interrupted"]
    done = [e for e in evs if e.kind == "reply_done"][0]
    assert len(interrupted) == 1 and interrupted[0].reason == "cancel" and interrupted[0].turn == 1
    assert done.interrupted and done.n_tokens < 2000 and interrupted[0].kept_text == done.text
    assert [e.turn for e in more if e.kind == "utterance"] == [2]
    assert app.history()[0]["interrupted"] is True


def test_speech_during_a_reply_queues_as_the_next_turn(session, wavs, monkeypatch):
    # The random model ends its greedy reply to this text after a few hundred tokens: on an idle machine that
    # can come before the file's question (~3 s of real-time audio) is declared. Without end tokens the reply
    # runs to max_new_tokens (3000) unless cancelled, so it is still going on any machine (the test cancels it).
    monkeypatch.setattr(session, "_end_ids", set())  # raises if the session no longer has this attribute
    app = started_app(
        app_config(**{"generation.max_new_tokens": 3000}),
        FileSource(str(wavs["one"]), realtime=True),
        session,
        stay=True,
    )
    try:
        app.submit_text("Talk for a long time")  # busy while the file's question is spoken and declared
        evs = collect(app, lambda e: any(x.kind == "status" and "waiting" in x.detail for x in e), timeout=20)
        assert app.busy and kinds(evs, "utterance") == ["utterance"]
        app.cancel()
        evs += collect(app, lambda e: "reply_start" in kinds(e, "reply_start"), timeout=20)
    finally:
        app.stop()
    utts = [e for e in evs if e.kind == "utterance"]
    assert [u.turn for u in utts] == [1, 2] and utts[0].text and len(utts[1].durations) == 1


def test_muted_ignores_audio(session, wavs):
    app = App(app_config(), FileSource(str(wavs["two"]), realtime=False), session)
    app.set_muted(True)
    app.start()
    try:
        evs = collect(app, finished(app))
    finally:
        app.stop()
    assert kinds(evs, "utterance", "reply_start") == []
    assert any(e.kind == "status" and e.state == "muted" for e in evs)


def test_push_to_talk_records_between_press_and_release(session, wavs):
    """A real-time file as the device: the recording is what was heard between press and release, trimmed."""
    app = started_app(app_config(**{"ui.mode": "ptt"}), FileSource(str(wavs["ptt"]), realtime=True), session, stay=True)
    try:
        app.ptt_press()
        speech_s = float(wavs["speech_len"])
        recorded = 0.8 + speech_s + 0.5  # the speech has ended; 0.5 s of silence recorded after it
        time.sleep(recorded)
        app.ptt_release()
        evs = collect(app, lambda e: "reply_done" in kinds(e, "reply_done"), timeout=30)
    finally:
        app.stop()
    recording = [e.detail for e in evs if e.kind == "status" and e.state == "recording"]
    assert recording[:3] == ["0.0 s", "0.5 s", "1.0 s"]
    utt = next(e for e in evs if e.kind == "utterance")
    # Leading 0.8 s and trailing 0.5 s of silence trimmed (0.15 s kept at each end).
    assert len(utt.durations) == 1 and speech_s - 0.1 < utt.durations[0] < speech_s + 0.45 < recorded
    assert app.history()[0]["audios"][0].dtype == np.float32


def test_push_to_talk_pressed_while_thinking_cancels_the_pending_replies(session, wavs):
    """The key pressed while typed turn 1 is in its prefill and turn 2 waits behind it: both are stopped as a
    press over playback would stop them (one interrupted each, reason ptt, before its reply_done; in the history
    with an empty interrupted reply), and what is recorded after the press is turn 3, answered."""
    hold = HeldPrefill(session)
    hold.arm()
    app = started_app(
        app_config(**{"ui.mode": "ptt"}), FileSource(str(wavs["ptt_late"]), realtime=True), session, stay=True
    )
    t0 = time.monotonic()
    try:
        app.submit_text("Tell me about the weather.")
        assert hold.entered.wait(10), "turn 1 never reached its prefill"
        app.submit_text("And about the tides.")
        app.ptt_press()  # 2 s of silence before the speech: the recording catches all of it
        hold.release()
        speech_s = float(wavs["speech_len"])
        time.sleep(max(0.0, t0 + 2.0 + speech_s + 0.5 - time.monotonic()))
        app.ptt_release()
        evs = collect(app, lambda e: any(x.kind == "reply_done" and x.turn == 3 for x in e), timeout=30)
    finally:
        hold.remove()
        app.stop()
    order = [(e.kind, e.turn) for e in evs if e.kind in ("utterance", "interrupted", "reply_done")]
    assert order == [
        ("utterance", 1),
        ("interrupted", 1),
        ("reply_done", 1),
        ("utterance", 2),
        ("interrupted", 2),
        ("reply_done", 2),
        ("utterance", 3),
        ("reply_done", 3),
    ], order
    assert [(e.turn, e.reason, e.kept_text) for e in evs if e.kind == "interrupted"] == [(1, "ptt", ""), (2, "ptt", "")]
    done3 = next(e for e in evs if e.kind == "reply_done" and e.turn == 3)
    assert not done3.interrupted and done3.n_tokens > 0
    history = [(h["kind"], h["reply"], h["interrupted"]) for h in app.history()]
    assert history[:2] == [("text", "", True), ("text", "", True)] and history[2][0] == "audio", history
    assert history[2][1] and not history[2][2], history
    assert [t.interrupted for t in session.turns] == [True, True, False]


def test_stop_is_ordered_and_joins_every_thread(session, wavs, monkeypatch):
    monkeypatch.setattr(session, "_end_ids", set())  # the reply runs to max_new_tokens: still going at stop
    source = FileSource(str(wavs["silence"]), realtime=False)
    app = started_app(app_config(**{"generation.max_new_tokens": 2000}), source, session, stay=True)
    app.submit_text("A long reply please")
    collect(app, lambda e: len(kinds(e, "token")) >= 2)
    app.stop(timeout=2.0)
    assert [t.name for t in app.threads] == ["va-model", "va-capture", "va-speech"]
    assert not any(t.is_alive() for t in app.threads)
    assert source._file is None  # the input was closed
    rest = []
    while not app.events.empty():
        rest.append(app.events.get_nowait())
    assert rest[-1].kind == "status" and rest[-1].state == "stopped"
    assert any(e.kind == "reply_done" and e.interrupted for e in rest)


def test_a_model_failure_mid_turn_is_an_error_and_the_app_goes_on(session, wavs):
    flaky = FaultInjectingBackend(session, FaultPlan(frozenset({1}), kind="backend", at="token"))
    app = started_app(app_config(), FileSource(str(wavs["two"]), realtime=False), flaky)
    try:
        evs = collect(app, finished(app))
    finally:
        app.stop()
    errors = [e for e in evs if e.kind == "error"]
    assert len(errors) == 1 and errors[0].source == "model" and "turn 1" in errors[0].message
    done = [e for e in evs if e.kind == "reply_done"]
    assert [d.turn for d in done] == [1, 2] and done[0].interrupted and not done[1].interrupted
    assert session.context_tokens == done[1].context_tokens  # the failed turn left no trace in the session
    assert app.history()[0].get("error") and app.history()[1]["reply"]


class EscapeEmittingFakeBackend:
    """FAKE: a model whose reply carries terminal escape sequences split across pieces (the tiny model's
    random text cannot be made to). Everything else about the turn is the App's real path."""

    description = "fake backend emitting escape sequences"
    PIECES = ("Hi\x1b[2", "J the\x1b]0;pwn", "ed\x07re\x9b1;1H", " \x1b", "[31mred\x07", "\x1b")

    def reply(self, turn: UserTurn, on_text, cancel: threading.Event) -> ReplyResult:
        for p in self.PIECES:
            on_text(p)
        return ReplyResult("".join(self.PIECES), len(self.PIECES), 0.001, 100.0, 10)

    def truncate_last_reply(self, spoken_text: str) -> None: ...

    def reset(self) -> None: ...


def test_model_text_is_stripped_of_control_sequences_before_any_event(wavs):
    app = started_app(
        app_config(), FileSource(str(wavs["silence"]), realtime=False), EscapeEmittingFakeBackend(), stay=True
    )
    try:
        app.submit_text("say something nasty")
        evs = collect(app, lambda e: "reply_done" in kinds(e, "reply_done"))
    finally:
        app.stop()
    tokens = "".join(e.text for e in evs if e.kind == "token")
    done = next(e for e in evs if e.kind == "reply_done")
    assert tokens == done.text == "Hi there red"
    assert app.history()[0]["reply"] == "Hi there red"


@pytest.mark.parametrize("cut", range(1, 30))
def test_stream_stripper_is_independent_of_where_pieces_split(cut):
    raw = "ok\x1b[1;31mred\x1b[0m \x1b]52;c;cGFzdGU=\x07done\x9b2J!"
    s = StreamStripper()
    out = s.feed(raw[:cut]) + s.feed(raw[cut:]) + s.finish()
    assert out == s.text == "okred done!"


def test_push_to_talk_trimming_and_chunks():
    rng = np.random.default_rng(0)
    tone = (0.2 * np.sin(np.arange(SR) * 2 * np.pi * 220 / SR)).astype(np.float32)
    noise = (0.001 * rng.standard_normal(SR)).astype(np.float32)
    audio = np.concatenate([noise, tone, noise])
    start, end = sound_bounds(audio)
    assert abs(start - SR) <= 480 and abs(end - 2 * SR) <= 480
    assert abs(len(trim_silence(audio)) - (SR + 2 * int(0.15 * SR))) <= 960
    assert sound_bounds(noise) is None or len(trim_silence(noise)) < SR // 2
    long = np.concatenate([np.tile(tone, 29), np.zeros(SR // 2, np.float32), np.tile(tone, 36)])  # 65.5 s
    chunks, capped = split_chunks(long, 30.0, 4)
    # cut in the pause at 29–29.5 s (the quietest point of the last 2 s before 30 s), then at 30 s later
    assert len(chunks) == 3 and not capped and 29.0 <= len(chunks[0]) / SR <= 29.5
    assert all(len(c) <= 30 * SR for c in chunks) and sum(len(c) for c in chunks) == len(long)
    chunks, capped = split_chunks(long, 30.0, 2)
    assert len(chunks) == 2 and capped


def test_real_microphone_path(pulse, session, tmp_path):
    """A PulseAudio null sink's monitor is the microphone; espeak speech played into the sink becomes a turn."""
    wav = tmp_path / "say.wav"
    sf.write(wav, np.concatenate([speech_16k("Hello, can you hear me?", tmp_path), silence(1.0)]), SR)
    source = MicrophoneSource(None, block_ms=20)
    app = started_app(app_config(**{"audio.silence_warning_s": 0.5}), source, session)
    try:
        # Nothing plays yet: the null sink's monitor is digitally silent, like a muted microphone.
        evs = collect(app, lambda e: "error" in kinds(e, "error"), timeout=10)
        assert "no signal" in evs[-1].message and evs[-1].source == "audio"
        levels, deadline = [], time.monotonic() + 0.5
        while time.monotonic() < deadline:
            ev = app.events.get(timeout=1)
            levels += [ev] if ev.kind == "level" else []
        assert levels and levels[-1].silent_s >= 0.5 and levels[-1].dbfs <= -99
        pulse.play(wav, wait=False)
        evs += collect(app, lambda e: "reply_done" in kinds(e, "reply_done"), timeout=30)
    finally:
        app.stop()
    utt = next(e for e in evs if e.kind == "utterance")
    assert len(utt.durations) == 1 and 0.8 < utt.durations[0] < 3.5
    start = next(e for e in evs if e.kind == "reply_start")
    assert start.latency_s >= HANGOVER_S  # real time: the hang-over is waited for, then the model runs


def test_a_lost_device_is_reported_and_picked_up_again(pulse, session, tmp_path):
    from voiceassist.audio.reconnect import reconnecting_microphone

    wav = tmp_path / "again.wav"
    sf.write(wav, np.concatenate([speech_16k("Are you back again?", tmp_path), silence(1.0)]), SR)
    config = app_config()
    app = started_app(config, reconnecting_microphone(config.audio), session)
    try:
        time.sleep(0.5)
        pulse.unload_sink("va_sink")  # the device disappears
        evs = collect(app, lambda e: any(x.kind == "status" and x.state == "device_lost" for x in e), timeout=15)
        pulse.load_sink("va_sink")
        pulse._run("pactl", "set-default-source", "va_sink.monitor")
        evs += collect(app, lambda e: any(x.kind == "status" and "input back" in x.detail for x in e), timeout=15)
        time.sleep(0.3)
        pulse.play(wav, wait=False)
        evs += collect(app, lambda e: "reply_done" in kinds(e, "reply_done"), timeout=30)
    finally:
        app.stop()
    errors = [e for e in evs if e.kind == "error"]
    assert len(errors) == 1 and errors[0].source == "audio" and "\n" not in errors[0].message
    assert [e.turn for e in evs if e.kind == "utterance"] == [1]


class _Attenuator:
    """A front-end processor that scales every block (a stand-in for noise suppression); counts what it saw."""

    def __init__(self, gain: float) -> None:
        self.gain, self.blocks, self.resets = gain, 0, 0

    def process(self, block):
        self.blocks += 1
        return AudioBlock(block.samples * self.gain, block.t)

    def reset(self) -> None:
        self.resets += 1


class _GateAfterFirst:
    """A turn gate that lets only the first utterance through and hears the end of each reply."""

    def __init__(self) -> None:
        self.decided, self.ended = 0, []

    def decide(self, utterance):
        self.decided += 1
        return GateDecision(self.decided == 1, reason="" if self.decided == 1 else "not for me")

    def on_reply_ended(self, message) -> None:
        self.ended.append(message.turn)


def test_front_end_processors_run_before_the_segmenter(session, wavs):
    # A processor that silences the input: the segmenter hears nothing, so no turn; the level meter (before the
    # chain) still shows the raw speech.
    mute = _Attenuator(0.0)
    app = started_app(
        app_config(), FileSource(str(wavs["two"]), realtime=False), session, processors=ProcessorChain([mute])
    )
    levels: list[float] = []
    evs: list = []
    deadline = time.monotonic() + 60
    try:
        while not (app.done.is_set() and app.events.empty()):
            assert time.monotonic() < deadline, f"timed out; events so far: {[e.kind for e in evs]}"
            try:
                ev = app.events.get(timeout=0.1)
            except queue.Empty:
                continue
            (levels.append(ev.dbfs) if isinstance(ev, Level) else evs.append(ev))
    finally:
        app.stop()
    assert not kinds(evs, "utterance") and mute.blocks > 50
    assert levels and max(levels) > -40, levels[:20]  # the meter shows the raw input
    # Unity gain: the same two turns as without a chain.
    same = _Attenuator(1.0)
    app = started_app(
        app_config(), FileSource(str(wavs["two"]), realtime=False), session, processors=ProcessorChain([same])
    )
    try:
        evs = collect(app, finished(app))
    finally:
        app.stop()
    assert [e.turn for e in evs if e.kind == "utterance"] == [1, 2] and same.blocks > 50


def test_a_turn_gate_decides_which_utterances_become_turns_and_hears_replies_end(session, wavs):
    gate = _GateAfterFirst()
    app = started_app(app_config(), FileSource(str(wavs["two"]), realtime=False), session, gate=gate)
    try:
        evs = collect(app, finished(app))
    finally:
        app.stop()
    assert gate.decided == 2
    assert [e.turn for e in evs if e.kind == "utterance"] == [1]  # the second utterance was not let through
    assert any(e.kind == "status" and e.detail == "not for me" for e in evs)
    assert gate.ended == [1]  # ReplyEnded reached the gate through the capture stage's control queue
