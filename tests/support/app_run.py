"""The App run end to end from a file or typed text, for tests/test_app.py and tests/test_app_remote.py: the
tiny model's config, the tests' recordings, and the App's events collected."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf

from support.app_devices import collect as events_for
from support.speech import silence, speech_16k
from voiceassist.app import App
from voiceassist.config import Config, with_overrides

SR = 16000


def app_config(**overrides) -> Config:
    values = {"model.name": "tiny", "generation.temperature": 0.0, "generation.max_new_tokens": 12}
    values.update(overrides)
    return with_overrides(Config(), values)


def app_wavs(d: Path) -> dict[str, Path]:
    """The App tests' recordings (espeak speech and silence, 16 kHz WAVs in ``d``), by name; ``speech_len``: the
    second sentence's length, s."""
    one = speech_16k("What is the weather like today?", d)
    two = speech_16k("Tell me a short story about a cat.", d)
    out = {
        "two": np.concatenate([silence(0.4), one, silence(1.2), two, silence(1.0)]),
        "one": np.concatenate([silence(0.3), one, silence(1.0)]),
        "ptt": np.concatenate([silence(0.8), two, silence(1.5)]),
        "ptt_late": np.concatenate([silence(2.0), two, silence(1.0)]),
        # a pause longer than vad.speculate_after_ms, shorter than the hang-over: speculation, then resumed
        "resume": np.concatenate([silence(0.3), one, silence(0.35), two, silence(1.0), one, silence(1.0)]),
        "silence": silence(0.5),
    }
    paths = {}
    for name, audio in out.items():
        paths[name] = d / f"{name}.wav"
        sf.write(paths[name], audio, SR)
    paths["speech_len"] = len(two) / SR  # type: ignore[assignment]
    return paths


def collect(app: App, until: Callable[[list], bool], timeout: float = 60.0) -> list:
    """Collect events (Level excluded) until ``until(events)`` is true; fails after ``timeout`` s."""
    got = events_for(app, timeout, until)
    assert until(got), f"timed out; events so far: {[e.kind for e in got]}"
    return got


def finished(app: App):
    return lambda evs: app.done.is_set() and app.events.empty()


def kinds(evs, *keep) -> list[str]:
    return [e.kind for e in evs if e.kind in keep]


def started_app(config, source, backend, **kw) -> App:
    backend.reset()
    real = getattr(backend, "inner", backend)  # the session itself, also under the fault injector
    if hasattr(real, "generation"):  # the shared session takes this test's reply length (greedy throughout)
        real.generation = config.generation
    app = App(config, source, backend, **kw)
    app.start()
    return app
