"""The status ladder: the stages' flags → one ``AssistantState`` (pure), and the board that emits it.

``ladder`` and ``StateTracker`` are pure (unit-tested in tests/test_state.py). ``StatusBoard`` is the one place
that turns the stages' reports (``CaptureReport``, ``ModelReport``, ``SettingsReport``) into Status events; the
stages only report, they never read each other's flags.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from dataclasses import dataclass

from voiceassist.events import AssistantState, Status
from voiceassist.pipeline.messages import CaptureReport, ModelReport, SettingsReport, StatusReport


@dataclass(frozen=True)
class StateFlags:
    """Everything the ladder looks at; each field has one writer (named)."""

    muted: bool = False  # SettingsReport (App, from the UI)
    device_lost: bool = False  # CaptureReport
    recording_s: float | None = None  # CaptureReport: push-to-talk recording so far, s
    hearing: bool = False  # CaptureReport: the segmenter confirmed speech
    busy: bool = False  # ModelReport: a turn is being answered
    pending: int = 0  # the turn queue: turns submitted and not yet finished
    speaking: bool = False  # the speech stage: output on and playing
    waiting_for_wake: bool = False  # CaptureReport: a wake word is set and none was heard (issue 13)


def ladder(flags: StateFlags) -> tuple[AssistantState, str]:
    """The state and its implied detail; the first rung that matches wins."""
    if flags.muted:
        return AssistantState.MUTED, ""
    if flags.device_lost:
        return AssistantState.DEVICE_LOST, ""
    if flags.recording_s is not None:
        return AssistantState.RECORDING, f"{flags.recording_s:.1f} s"
    if flags.hearing:
        return AssistantState.HEARING, ""
    if flags.busy or flags.pending:
        return AssistantState.THINKING, ""  # also a turn handed over and not yet taken (behind a speculation)
    if flags.speaking:
        return AssistantState.SPEAKING, ""
    if flags.waiting_for_wake:
        return AssistantState.WAITING_FOR_WAKE, ""
    return AssistantState.LISTENING, ""


class StateTracker:
    """Decides when a Status is due: on a change of state, or of detail when one is given (pure, no threads)."""

    def __init__(self) -> None:
        self.current: tuple[AssistantState | None, str] = (None, "")

    def update(self, flags: StateFlags, detail: str = "", force: bool = False) -> tuple[AssistantState, str] | None:
        """The (state, detail) to emit now, or None when nothing changed. ``force`` emits even an unchanged
        state (a note such as "new conversation"); a bare repeat of the same state never emits."""
        state, implied = ladder(flags)
        detail = implied or detail
        if not force and ((state, detail) == self.current or (state == self.current[0] and not detail)):
            return None
        self.current = (state, detail)
        return state, detail


class StatusBoard:
    """Thread-safe: combines the reports into Status events, emitted under one lock so that the last Status is
    always the current state. ``pending`` and ``speaking`` are probes (the turn queue's count, the speech stage's
    playback), read at each refresh."""

    def __init__(
        self,
        emit: Callable[[Status], None],
        clock: Callable[[], float],
        pending: Callable[[], int],
        speaking: Callable[[], bool],
    ) -> None:
        self._emit = emit
        self._clock = clock
        self._pending = pending
        self._speaking = speaking
        self._flags = StateFlags()
        self._tracker = StateTracker()
        self._lock = threading.Lock()

    @property
    def state(self) -> AssistantState | None:
        return self._tracker.current[0]

    def report(
        self, report: StatusReport | None = None, t: float | None = None, detail: str = "", force: bool = False
    ) -> None:
        """Record a stage's report (None: just look again at the probes) and emit Status if the state changed."""
        with self._lock:
            match report:
                case CaptureReport(device_lost=lost, hearing=hearing, recording_s=rec, waiting_for_wake=waiting):
                    self._flags = dataclasses.replace(
                        self._flags, device_lost=lost, hearing=hearing, recording_s=rec, waiting_for_wake=waiting
                    )
                case ModelReport(busy=busy):
                    self._flags = dataclasses.replace(self._flags, busy=busy)
                case SettingsReport(muted=muted):
                    self._flags = dataclasses.replace(self._flags, muted=muted)
            flags = dataclasses.replace(self._flags, pending=self._pending(), speaking=self._speaking())
            due = self._tracker.update(flags, detail, force)
            if due is not None:
                self._emit(Status(due[0], due[1], t=self._clock() if t is None else t))
