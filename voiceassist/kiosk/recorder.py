"""A wrapper backend that hands every finished turn to the kiosk's :class:`~voiceassist.kiosk.storage.Store`.

It sits between the App and the real backend, so it sees exactly what the model got (the audios, the typed
text) and what it answered, without depending on how the App keeps its history. Storage failures (disk full,
folder removed) are logged, never raised: the visitor still gets the answer.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from voiceassist.backend import Backend, BackendWrapper, ReplyResult, UserTurn
from voiceassist.kiosk.storage import TurnStore

log = logging.getLogger("voiceassist.kiosk")


class RecordingBackend(BackendWrapper):
    """Delegates to ``inner``; after each reply (or failure) records the turn in ``store``."""

    def __init__(self, inner: Backend, store: TurnStore) -> None:
        super().__init__(inner)
        self.store = store
        self.turn = 0  # turns of the current conversation (reset with it)
        self._lock = threading.Lock()

    def reply(self, turn: UserTurn, on_text: Callable[[str], None], cancel: threading.Event) -> ReplyResult:
        with self._lock:
            self.turn += 1
            n = self.turn
        try:
            result = self.inner.reply(turn, on_text, cancel)
        except Exception as err:
            self._record(n, turn, error=" ".join(str(err).split()))
            raise
        self._record(
            n,
            turn,
            reply=result.text,
            figures={"n_tokens": result.n_tokens, "ttft_s": round(result.ttft_s, 3), "interrupted": result.interrupted},
        )
        return result

    def _record(self, n: int, turn: UserTurn, **kw: Any) -> None:
        try:
            self.store.record_turn(n, turn.audios, turn.text, **kw)
        except OSError as err:
            log.error(
                "could not store turn %d in %s: %s",
                n,
                self.store.folder,
                err.strerror or err,
                extra={"fields": {"source": "storage"}},
            )

    def reset(self) -> None:
        self.inner.reset()
        with self._lock:
            self.turn = 0
        self.store.new_conversation()
