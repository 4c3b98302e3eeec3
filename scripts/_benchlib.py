"""What the App benchmarks share: one conversation read as a fast file (``voiceassist chat --from-file F
--fast``), its events taken off the queue by the benchmark as the front end, turn k run with
``configs[k % len(configs)]`` (interleaved, so that every setting sees the same machine load).

Used by scripts/bench_latency.py and scripts/bench_voice.py (``scripts/`` on ``sys.path``, as when run).
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from voiceassist.app import App
from voiceassist.audio.sources import FileSource
from voiceassist.config import Config
from voiceassist.events import Event


def fast_app(configs: list[Config], backend: Any, wav: Path, speaker: Any = None) -> App:
    """The App reading ``wav`` as a fast file in a new conversation on ``backend``; turn 1 runs with
    ``configs[1 % len(configs)]``."""
    backend.reset()
    return App(configs[1 % len(configs)], FileSource(str(wav), realtime=False), backend, speaker=speaker)


def interleaved_events(app: App, configs: list[Config], set_next: Callable[[Config], None]) -> Iterator[Event]:
    """Every event of the started ``app`` (Level too) until its file is done and the queue is empty. On each
    utterance with an end of speech, before it is yielded, ``set_next(configs[(turn + 1) % n])`` puts the next
    turn's setting in place: a fast file runs in lock step (the next turn's audio is read only after this
    turn's reply), so it is in place before the next turn's pause."""
    n = len(configs)
    while not (app.done.is_set() and app.events.empty()):
        try:
            ev = app.events.get(timeout=0.1)
        except queue.Empty:
            continue
        if ev.kind == "utterance" and ev.speech_end_t is not None:
            set_next(configs[(ev.turn + 1) % n])
        yield ev


def pump_events(app: App, events: list[Event], seconds: float, until: Callable[[], bool] | None = None) -> None:
    """Append ``app``'s events (all but level and token) to ``events`` for ``seconds`` or until ``until()``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not (until and until()):
        try:
            ev = app.events.get(timeout=0.02)
        except queue.Empty:
            continue
        if ev.kind not in ("level", "token"):
            events.append(ev)
