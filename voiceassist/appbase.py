"""Pieces shared by the App's threads: limits, the pending-turn record, small helpers."""

from __future__ import annotations

import queue
from dataclasses import dataclass
from typing import Any

import numpy as np

EVENTS_MAX = 2000  # events queue length; Level events only go in while it is less than half full
TURNS_MAX = 8  # turns waiting for the model; a microphone's turn beyond this is dropped with an error
LEVEL_EVERY_S = 0.05  # at most one Level event per this much capture time, s
DIGITAL_SILENCE = 1.0 / 32768  # peak below one 16-bit step: the input is digitally silent
RECORDING_STATUS_EVERY_S = 0.5  # recording indicator refresh, s of recording
RETRY_DEVICE_S = 1.0  # wait between attempts to reopen a lost input device, s
POLL_S = 0.05  # how often idle threads look at the stop event and their flags, s
MODES = ("handsfree", "ptt")
MAX_SPEECH_WAIT_S = 120.0  # a fast file waits at most this long for a reply to be spoken, s
RETRY_FIRST_S = 1.0  # first pause before a failed (retryable) turn is sent again, s; doubles each retry
RETRY_MAX_S = 30.0  # longest pause between two sends of a failed turn, s


@dataclass(frozen=True)
class PendingTurn:
    """A user turn waiting for the model (what the capture thread or the UI hands to the worker)."""

    kind: str  # "audio" (microphone / push-to-talk), "text", "file"
    audios: tuple[np.ndarray, ...] = ()
    text: str = ""
    path: str = ""  # kind == "file": the file to analyse
    speech_end_t: float | None = None  # end of speech, capture clock, s (audio turns)
    skew: float = 0.0  # block clock − wall clock when the turn was complete, s (see the module docstring)
    capped: bool = False
    reasons: tuple[str, ...] = ()


def speaking(speaker: Any) -> bool:
    """The speaker's speaking(), False if it fails."""
    try:
        return bool(speaker.speaking())
    except Exception:  # noqa: BLE001 - a broken speaker counts as silent
        return False


def put_nowait(q: queue.Queue, item: Any) -> None:
    """Put without waiting; a full queue drops the item."""
    try:
        q.put_nowait(item)
    except queue.Full:
        pass  # the front end is not keeping up; Level events and the like are not worth blocking capture for


def quietly(fn: Any) -> None:
    """Call ``fn()``, ignoring its errors (shutdown paths)."""
    try:
        fn()
    except Exception:  # noqa: BLE001 - closing is best effort during shutdown
        pass


def one_line(err: Any) -> str:
    """An error (or any object) as one line of text."""
    return " ".join(str(err).split()) or type(err).__name__
