"""The App on real devices, for the tests that run it end to end: the tiny random-weight Qwen2-Audio's config,
the real Speaker, the App listening through PortAudio (``MicrophoneSource(None)``: the default source, a
PulseAudio null sink's monitor under the ``pulse`` fixture), and the App's events collected.

Used by tests/test_speech_app.py, tests/test_voice_latency.py, tests/test_duplex_app.py and
tests/test_wake_app.py; ``HeldPrefill`` (a slow model) also by tests/test_app.py.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from voiceassist.app import App
from voiceassist.audio.sources import MicrophoneSource
from voiceassist.config import Config, with_overrides

TINY = {"model.name": "tiny", "generation.temperature": 0.0}  # the tiny random-weight model, greedy


def tiny_config(values: Mapping[str, Any], **overrides: Any) -> Config:
    """The tiny model's config with a test module's ``values``, then a test's ``overrides`` (dotted keys)."""
    return with_overrides(Config(), {**TINY, **values, **overrides})


def fresh(session: Any, cfg: Config) -> None:
    """A module's shared session, emptied and set to this test's generation settings (its reply length)."""
    session.reset()
    session.generation = cfg.generation


def collect(app: App, seconds: float, until: Callable[[list], bool] | None = None) -> list:
    """The App's events (but Level) for ``seconds``, or until ``until(events)`` is true."""
    got: list = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not (until and until(got)):
        try:
            ev = app.events.get(timeout=0.02)
        except queue.Empty:
            continue
        if ev.kind != "level":
            got.append(ev)
    return got


def make_speaker(cfg: Config, ready_s: float = 15.0) -> Any:
    """The real Speaker (espeak-ng worker process, PortAudio playback), up and ready."""
    from voiceassist.speech import Speaker

    sp = Speaker(cfg.tts, cfg.audio.output_device)
    assert sp.wait_ready(ready_s), "the speech worker or the output device did not come up"
    return sp


class HeldPrefill:
    """A deliberately slow model (the one stand-in of the tests that use it; the tiny model is too quick to
    catch a reply still pending): a forward pre-hook on the real tiny session's language model. After ``arm()``,
    the next forward — the next turn's prefill — waits in the model thread until ``release()``; ``entered`` is set
    when it starts waiting. Everything else (encoder, cache, decoding, cancel) is the session's own."""

    def __init__(self, session: Any) -> None:
        self.entered = threading.Event()
        self._go = threading.Event()
        self._armed = False
        self._handle = session.model.model.language_model.register_forward_pre_hook(self._hook)

    def _hook(self, *_: Any) -> None:
        if self._armed:
            self._armed = False
            self.entered.set()
            self._go.wait(30.0)  # bounded: a failing test must not hang the model thread for ever

    def arm(self) -> None:
        self.entered.clear()
        self._go.clear()
        self._armed = True

    def release(self) -> None:
        self._armed = False
        self._go.set()

    def remove(self) -> None:
        self.release()
        self._handle.remove()


def mic_app(cfg: Config, backend: Any, speaker: Any = None) -> App:
    """The App listening to the default PortAudio input (under the ``pulse`` fixture: a null sink's monitor)."""
    return App(cfg, MicrophoneSource(None), backend, speaker=speaker)
