"""Small frozen message types that flow between the stages and out to the front ends.

Two kinds:
- pipeline messages (``AudioBlock``, ``Utterance``): audio handed from capture to the segmenter and from the
  segmenter to the model worker; never serialised;
- front-end events (everything deriving from ``Event``): what the TUI, the plain and JSON-lines outputs and the
  kiosk log consume. ``Event.to_json()`` gives the ``--events`` line: ``{"type": ..., "t": ..., ...}``.

Times named ``t`` or ``*_t`` are on the capture clock: ``time.monotonic()`` seconds, the clock the capture
thread stamps blocks with, so "end of speech → first token" is a difference of two readings of one clock.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

SAMPLE_RATE = 16000  # Hz: every audio inside the pipeline (webrtcvad, Qwen2-Audio's feature extractor, history)


def now() -> float:
    """The capture clock, in seconds (monotonic; only differences mean anything)."""
    return time.monotonic()


# ---- pipeline messages -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AudioBlock:
    """One block of captured audio, already 16 kHz mono float32 in [-1, 1]."""

    samples: np.ndarray
    t: float  # capture-clock time of the first sample, s


@dataclass(frozen=True)
class Utterance:
    """One user turn cut by the segmenter (or recorded by push-to-talk): one or more audios of ≤ 30 s each."""

    chunks: tuple[np.ndarray, ...]  # 16 kHz mono float32, each at most 30 s
    start_t: float  # capture-clock time of the first sample kept (pre-roll included), s
    end_t: float  # capture-clock time of the end of speech (last speech frame), s
    reasons: tuple[str, ...] = ()  # per chunk: "silence", "cap", "end_of_input", "ptt"

    @property
    def durations(self) -> tuple[float, ...]:
        return tuple(len(c) / SAMPLE_RATE for c in self.chunks)

    @property
    def capped(self) -> bool:
        return "cap" in self.reasons


# Segmenter events (vad.Segmenter.feed/flush), in order: SpeechStarted, then any number of SpeechPaused /
# SpeechResumed pairs (a SpeechPaused may end the sequence), then exactly one Utterance.


@dataclass(frozen=True)
class SpeechStarted:
    """Speech was confirmed (an Utterance will follow); ``t`` is its first speech frame, capture clock, s."""

    t: float


@dataclass(frozen=True)
class SpeechPaused:
    """Silence inside an utterance: ``utterance`` is EXACTLY what will be emitted if speech does not resume."""

    utterance: Utterance


@dataclass(frozen=True)
class SpeechResumed:
    """Speech came back after a SpeechPaused; the paused utterance is void. ``t``: capture clock, s."""

    t: float


SegmenterEvent = SpeechStarted | SpeechPaused | SpeechResumed | Utterance


# ---- front-end events --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """Base of every front-end event; ``kind`` is the JSON ``type``."""

    kind: ClassVar[str] = "event"
    t: float = field(default_factory=now, kw_only=True)  # capture clock, s

    def to_json(self) -> dict[str, Any]:
        """The ``--events`` JSON-lines record (arrays become lists, floats rounded to µs)."""
        out: dict[str, Any] = {"type": self.kind}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, float):
                v = round(v, 6)
            elif isinstance(v, tuple):
                v = [round(x, 6) if isinstance(x, float) else x for x in v]
            out[f.name] = v
        return out


class AssistantState(enum.StrEnum):
    """The states of the status ladder (``voiceassist.pipeline.state``); the value is the JSON ``state``.

    A new state (e.g. ``WAITING_FOR_WAKE = "waiting_for_wake"`` for a wake-word gate) is a member here, a
    flag in ``StateFlags`` and one rung in ``ladder()``; front ends show unknown states by their value."""

    LISTENING = "listening"
    HEARING = "hearing"
    RECORDING = "recording"
    THINKING = "thinking"
    SPEAKING = "speaking"
    MUTED = "muted"
    DEVICE_LOST = "device_lost"
    STOPPED = "stopped"
    LOADING = "loading"  # the kiosk, before the App exists
    WAITING_FOR_WAKE = "waiting_for_wake"  # a wake word is set and none was heard: speech alone is not a turn


@dataclass(frozen=True)
class Status(Event):
    """The assistant's state changed (an ``AssistantState``), with an optional one-line detail."""

    kind: ClassVar[str] = "status"
    state: AssistantState
    detail: str = ""


@dataclass(frozen=True)
class Level(Event):
    """Input level for the meter (frequent; not written to --events)."""

    kind: ClassVar[str] = "level"
    dbfs: float  # RMS level of the last block, dB relative to full scale
    silent_s: float = 0.0  # how long the input has been digitally silent, s


@dataclass(frozen=True)
class UtteranceEvent(Event):
    """A user turn was submitted: audio durations and/or typed text."""

    kind: ClassVar[str] = "utterance"
    turn: int
    durations: tuple[float, ...] = ()  # each audio's length, s
    text: str = ""
    capped: bool = False  # True where the 30 s cap cut an audio
    levels: tuple[float, ...] = ()  # a few RMS levels in dBFS across the audio, for a sparkline
    speech_end_t: float | None = None  # end of speech on the capture clock, s (None for typed turns)
    file: str = ""  # the analysed file's name, for /file turns


@dataclass(frozen=True)
class ReplyStart(Event):
    """The first token of a reply is ready."""

    kind: ClassVar[str] = "reply_start"
    turn: int
    ttft_s: float  # turn submitted (audio in hand) → first token, s
    latency_s: float | None = None  # end of speech (capture clock) → first token, s


@dataclass(frozen=True)
class Token(Event):
    """A piece of reply text (already safe to display: control sequences stripped)."""

    kind: ClassVar[str] = "token"
    turn: int
    text: str


@dataclass(frozen=True)
class ReplyDone(Event):
    """A reply ended (completed or interrupted)."""

    kind: ClassVar[str] = "reply_done"
    turn: int
    text: str
    n_tokens: int
    tok_per_s: float
    ttft_s: float
    latency_s: float | None = None
    context_tokens: int = 0
    interrupted: bool = False
    # End of speech (capture clock) → the first sample of the spoken reply at the output device (PortAudio's DAC
    # time), s; None when the reply was not spoken (speech off, nothing speakable, speech failed, or no sound
    # within the model stage's short wait after the reply ended: see VOICE_WAIT_S).
    voice_latency_s: float | None = None


@dataclass(frozen=True)
class Interrupted(Event):
    """A reply was cut short: by Ctrl-C, barge-in, push-to-talk or the wake word. One per stop, before that
    reply's ReplyDone (interrupted=True), whether or not any of it had been heard."""

    kind: ClassVar[str] = "interrupted"
    turn: int
    reason: str  # "cancel", "barge_in", "ptt", "wake"
    kept_text: str = ""  # what stays in the history


@dataclass(frozen=True)
class ErrorEvent(Event):
    """Something went wrong; ``message`` is one line for a person."""

    kind: ClassVar[str] = "error"
    message: str
    source: str = ""  # "audio", "model", "tts", "server", ...
    turn: int | None = None  # the turn it concerns, once numbered by the model stage
    dropped: bool = False  # a submitted turn will get no reply (turn queue full, unreadable file)
    file: str = ""  # dropped: the file name of the /file turn that could not be read


@dataclass(frozen=True)
class Wake(Event):
    """The wake word was heard (issue 13); ``t`` is the end of the audio that fired it (capture clock, s)."""

    kind: ClassVar[str] = "wake"
    word: str  # model id ("okay_nabu"), or "key" for the push-to-talk key standing in for it
    probability: float  # the detector's score, 0..1
    action: str = "listen"  # "listen" (the next speech is the turn) or "stop" (it stopped a reply)
