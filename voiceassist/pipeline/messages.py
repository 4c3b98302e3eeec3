"""The typed messages the stages send each other (front-end events are in ``voiceassist.events``).

Each message names its queue or inbox; docs/architecture.md has the whole picture (who writes, who reads).
A stage dispatches on the message's type (``match``), never on a string.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Literal

import numpy as np

from voiceassist.events import Utterance

TurnKind = Literal["audio", "text", "file"]
Mode = Literal["handsfree", "ptt"]
MODES: tuple[Mode, ...] = ("handsfree", "ptt")
InterruptReason = Literal["cancel", "barge_in", "ptt", "stop", "wake"]
# The user's voice or key stopped the reply ("only the heard part stays in the conversation; what the user said is
# the next turn"): a spoken reply is cut back to what was heard of it — nothing, if it was stopped while still
# queued, thinking or being synthesised. "cancel" (Ctrl-C) keeps what was shown; "stop" is the App's shutdown.
HEARD_STOPS: frozenset[InterruptReason] = frozenset({"barge_in", "ptt", "wake"})


# ---- the turn queue (capture stage and UI → model stage) ----------------------------------------------------
@dataclass(frozen=True)
class TurnRequest:
    """A user turn waiting for the model: what the capture stage or the UI hands to the model stage."""

    kind: TurnKind  # "audio" (microphone / push-to-talk), "text", "file"
    audios: tuple[np.ndarray, ...] = ()  # 16 kHz mono float32, each ≤ vad.max_chunk_s
    text: str = ""
    path: str = ""  # kind == "file": the file to analyse
    speech_end_t: float | None = None  # end of speech, capture clock, s (audio turns)
    skew: float = 0.0  # block clock − wall clock when the turn was complete, s (0 but for a fast file)
    capped: bool = False
    reasons: tuple[str, ...] = ()  # per audio: why it ended ("silence", "cap", "ptt", ...)


# ---- the model stage's control queue (App, speech stage → model stage, handled between turns) -------------
@dataclass(frozen=True)
class ResetConversation:
    """Start a new conversation as soon as the reply in progress is done (turns already waiting are kept)."""


@dataclass(frozen=True)
class TruncateReply:
    """Barge-in / push-to-talk over playback: cut ``turn``'s reply back to ``spoken`` (what was heard)."""

    turn: int
    spoken: str
    reason: InterruptReason


@dataclass(frozen=True)
class SetSpeculativeSentence:
    """Decode and synthesise the reply's first sentence during the hang-over, or not (from the next speculation
    on; ``tts.speculative_first_sentence`` at start)."""

    on: bool


ModelControl = ResetConversation | TruncateReply | SetSpeculativeSentence


class SpeculationRequest:
    """The speculation slot (capture stage → model stage): prefill ``utterance`` while the hang-over runs.

    A handshake, not a plain value: the model stage ``claim()``s it before it starts the prefill, the capture
    stage ``withdraw()``s it when the utterance was committed first (a request nobody claimed must not be
    prefilled later, after its turn). ``cancel`` rolls back a prefill that was claimed (speech resumed).
    """

    def __init__(self, utterance: Utterance) -> None:
        self.utterance = utterance
        self.cancel = threading.Event()  # set: do not start, or stop and roll back
        self.claimed = threading.Event()  # set by the model stage when it takes the request
        self._lock = threading.Lock()
        self._withdrawn = False

    def claim(self) -> bool:
        """Model stage: take the request; False if it was withdrawn or cancelled meanwhile."""
        with self._lock:
            if self._withdrawn or self.cancel.is_set():
                return False
            self.claimed.set()
            return True

    def withdraw(self) -> None:
        """Capture stage: the request is void if not yet claimed (a claimed prefill stays valid)."""
        with self._lock:
            self._withdrawn = True


# ---- the capture stage's control inbox (App, model stage → capture stage, read before each block) ---------
@dataclass(frozen=True)
class SetMode:
    """Hands-free (VAD segments) or push-to-talk."""

    mode: Mode


@dataclass(frozen=True)
class SetMuted:
    """Muted: the microphone's audio is ignored (the level meter still moves)."""

    muted: bool


@dataclass(frozen=True)
class ReplyEnded:
    """The model stage finished ``turn``'s reply at ``t`` (capture clock, s); gates (a wake word's follow-up
    window) hear it here."""

    turn: int
    t: float
    interrupted: bool = False
    # stopped by the user (HEARD_STOPS: the wake word, the key): the wake gate handled that stop when it was
    # heard; this late end (a pending turn's, possibly after the next question was already taken) opens nothing
    stopped: bool = False


@dataclass(frozen=True)
class SetSpeculation:
    """Ask for speculative prefills from the next pause on, or not (``model.speculative_prefill`` at start)."""

    on: bool


@dataclass(frozen=True)
class WakeKey:
    """The push-to-talk key in hands-free mode with a wake word: it stands in for the wake word (stop, listen)."""

    t: float  # capture clock, s


CaptureControl = SetMode | SetMuted | SetSpeculation | ReplyEnded | WakeKey


# ---- the speech stage's inbox (model stage, capture stage, App → speech stage; handled on the sender's thread)
@dataclass(frozen=True)
class BeginReply:
    """A reply starts: it is spoken if speech output is on now (a later /tts on starts with the next reply).

    The place for a speculative first sentence: a ``BeginReply(speculative=True)`` during the
    hang-over would synthesise without playing, a later ``CommitReply`` play it, a ``DiscardReply`` drop it."""

    turn: int


@dataclass(frozen=True)
class SpeakText:
    """A piece of reply text (display-safe) to be spoken."""

    turn: int
    text: str


@dataclass(frozen=True)
class EndOfReply:
    """The reply is complete: speak its last words even without a sentence end."""

    turn: int


@dataclass(frozen=True)
class StopSpeaking:
    """Stop playback now; no more text of the reply in progress is spoken. ``truncate``: the model's history is
    cut back to what was heard (a TruncateReply goes to the model stage) and the reply in progress is cancelled
    with ``reason``."""

    reason: InterruptReason
    truncate: bool = True


@dataclass(frozen=True)
class SetSpeechOutput:
    """Speak replies (from the next text on) or not; the speaker is opened on first use."""

    on: bool


@dataclass(frozen=True)
class PrepareSentence:
    """The speculative first sentence of the reply to come (model stage, during the hang-over): synthesise it
    now and hold it without playing. There is no commit message: the committed reply's first SpeakText pieces
    complete the same sentence, and the speaker plays the held sound instead of synthesising (it checks the
    text is exactly the same, so a different reply can never play it)."""

    text: str


@dataclass(frozen=True)
class DiscardPrepared:
    """The speculation was rolled back (speech resumed): drop the held sentence."""


SpeechMessage = BeginReply | SpeakText | EndOfReply | StopSpeaking | SetSpeechOutput | PrepareSentence | DiscardPrepared


# ---- reports to the status board (every stage → StatusBoard) -------------------------------------------------
@dataclass(frozen=True)
class CaptureReport:
    """The capture stage's part of the status ladder."""

    device_lost: bool = False
    hearing: bool = False
    recording_s: float | None = None  # push-to-talk recording in progress: its length so far, s
    waiting_for_wake: bool = False  # a wake word is set and the gate waits for it (speech alone is no turn)


@dataclass(frozen=True)
class ModelReport:
    """The model stage's part: a turn is being answered (or waits to be sent again)."""

    busy: bool = False


@dataclass(frozen=True)
class SettingsReport:
    """The UI's settings that change the state."""

    muted: bool = False


StatusReport = CaptureReport | ModelReport | SettingsReport
