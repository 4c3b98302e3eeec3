"""A wrapper backend that hands every finished turn to the kiosk's :class:`~voiceassist.kiosk.storage.Store`.

It sits between the App and the real backend, so it sees exactly what the model got (the audios, the typed
text) and what it answered, without depending on how the App keeps its history. Storage is best-effort:
a failure (disk full, folder read-only or removed, an encoder error) is logged once per kind, never raised,
and never touches the conversation: the visitor still gets the answer and the model keeps the turn. A kind
that works again is logged once too ("storage works again"), so the journal shows the outage's extent.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from voiceassist.backend import Backend, BackendWrapper, ReplyResult, UserTurn
from voiceassist.kiosk.storage import StorageError, TurnStore

log = logging.getLogger("voiceassist.kiosk")


class RecordingBackend(BackendWrapper):
    """Delegates to ``inner``; after each reply (or failure) records the turn in ``store``."""

    def __init__(self, inner: Backend, store: TurnStore) -> None:
        super().__init__(inner)
        self.store = store
        self.turn = 0  # turns of the current conversation (reset with it)
        self._lock = threading.Lock()
        self.failed_turns = 0  # turns not (fully) stored since the start: the status file's health figures
        self._failing: dict[str, str] = {}  # part ("audio", "transcript", ...) -> reason last logged

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
        # Anything the store raises is caught here: a storage bug or failure must never reach the model
        # worker, which would roll the turn back as a model failure.
        try:
            self.store.record_turn(n, turn.audios, turn.text, **kw)
            failures: list[tuple[str, str]] = []
        except StorageError as err:
            failures = err.failures
        except Exception as err:
            reason = err.strerror if isinstance(err, OSError) and err.strerror else f"{type(err).__name__}: {err}"
            failures = [("storage", " ".join(str(reason).split()))]
        if failures:
            self.failed_turns += 1
        now_failing = {part: reason for part, reason in failures}
        for part, reason in now_failing.items():
            if self._failing.get(part) != reason:  # once per kind (part and reason), not once per turn
                log.error(
                    "could not store %s of turn %d in %s: %s (storage is best-effort: the conversation goes on; "
                    "this is logged once until it works again)",
                    part,
                    n,
                    self.store.folder,
                    reason,
                    extra={"fields": {"source": "storage", "part": part}},
                )
        if not failures and self._failing:  # a turn stored whole: every kind logged as failing works again
            log.info(
                "storage works again: turn %d stored in %s (was failing: %s)",
                n,
                self.store.folder,
                ", ".join(sorted(self._failing)),
                extra={"fields": {"source": "storage"}},
            )
            self._failing = {}
        self._failing.update(now_failing)

    def reset(self) -> None:
        self.inner.reset()
        with self._lock:
            self.turn = 0
        self.store.new_conversation()
