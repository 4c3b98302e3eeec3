"""The maximum conversation length, enforced between turns without losing a visitor's question.

A wrapper backend counts the turns of the current conversation (answered or failed). When the limit is reached
it calls ``on_limit`` from inside the model worker, right after that turn: the kiosk then queues the App's reset
so that the worker performs it before it takes the next turn. A question already waiting is answered in the
new conversation instead of being dropped, and this is deterministic (no race with the event loop).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from voiceassist.backend import Backend, BackendWrapper, ReplyResult, UserTurn


class TurnLimit(BackendWrapper):
    """Delegates to ``inner``; after every ``max_turns()``-th turn since the last reset calls ``on_limit()``."""

    def __init__(self, inner: Backend, max_turns: Callable[[], int], on_limit: Callable[[], None]) -> None:
        super().__init__(inner)
        self.max_turns = max_turns  # read each turn, so a configuration reload applies at once
        self.on_limit = on_limit
        self.count = 0  # turns since the last reset
        self._lock = threading.Lock()

    def reply(self, turn: UserTurn, on_text: Callable[[str], None], cancel: threading.Event) -> ReplyResult:
        try:
            return self.inner.reply(turn, on_text, cancel)
        finally:
            with self._lock:
                self.count += 1
                limit = self.max_turns()
                hit = bool(limit) and self.count >= limit
                if hit:
                    self.count = 0
            if hit:
                self.on_limit()

    def reset(self) -> None:
        self.inner.reset()
        with self._lock:
            self.count = 0
