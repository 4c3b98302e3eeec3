"""The speech stage: owns the Speaker (sentence TTS in a killable process, the Player) and whether it speaks.

Inbox: ``send(message)`` with a ``SpeechMessage``, handled at once on the sender's thread under the stage's
lock (the model stage's ``EndOfReply`` must have queued the last words before its ReplyDone is seen). Out:
ErrorEvents and its housekeeping thread's status refreshes; a ``StopSpeaking(truncate=True)`` sends
``TruncateReply`` to the model stage's control queue and cancels the reply in progress. Read-only view for the
capture stage's echo policy: ``PlaybackTimeline`` (speaking, quiet_since, echo_overlaps).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from voiceassist.config import Config
from voiceassist.errors import one_line, quietly
from voiceassist.events import ErrorEvent, Event
from voiceassist.pipeline.messages import (
    BeginReply,
    DiscardPrepared,
    EndOfReply,
    InterruptReason,
    ModelControl,
    PrepareSentence,
    SetSpeechOutput,
    SpeakText,
    SpeechMessage,
    StopSpeaking,
    TruncateReply,
)

HOUSEKEEPING_S = 0.02  # how often the stage looks at the speaker's errors and playback state, s


@runtime_checkable
class FarEndWriter(Protocol):
    """A speaker that can publish what its player writes (speech.speaker.Speaker; stand-ins need not)."""

    def set_far_end(self, reference: object) -> None: ...


class Speaker(Protocol):
    """What the App needs of speech output (``voiceassist.speech.Speaker``; tests may pass a stand-in)."""

    def feed(self, turn: int, text: str) -> None: ...
    def end_reply(self, turn: int) -> None: ...
    def stop(self) -> str: ...
    def speaking(self) -> bool: ...
    def quiet_since(self) -> float | None: ...
    def echo_overlaps(self, start_t: float, end_t: float) -> bool: ...
    def close(self) -> None: ...


@runtime_checkable
class SpokenReplies(Protocol):
    """The model stage's read-only view of the speech stage (like the capture stage's PlaybackTimeline)."""

    def output_on(self) -> bool: ...  # replies are spoken now (a speculative first sentence is worth it)

    # capture-clock time the reply's first sample reached the device; None if it is not (or not yet) spoken
    def first_sound(self, turn: int, timeout: float, cancel: threading.Event | None = None) -> float | None: ...

    # the text of the reply heard so far ("" before its first sound); None if the reply was not to be spoken
    def heard(self, turn: int) -> str | None: ...


class SpeechStage:
    """See the module docstring. Implements ``PlaybackTimeline``."""

    def __init__(
        self,
        config: Config,
        speaker: Speaker | None,
        *,
        emit: Callable[[Event], None],
        clock: Callable[[], float],
        model_control: queue.SimpleQueue[ModelControl],
        cancel_reply: Callable[[InterruptReason], None],
        on_change: Callable[[], None],
        stop: threading.Event,
    ) -> None:
        self.config = config
        self._speaker = speaker
        self._emit = emit
        self._clock = clock
        self._model_control = model_control  # this stage writes TruncateReply; the model stage reads
        self._cancel_reply = cancel_reply
        self._on_change = on_change  # the status board looks again (speaking may have changed)
        self._stop = stop
        self._on = speaker is not None and config.tts.enabled
        self._reply_turn: int | None = None  # the reply being spoken (None: text only, or stopped: no more sound)
        self._voiced_turn: int | None = None  # the last reply BeginReply chose to speak (a stop leaves it)
        self._speaking_turn = 0  # the turn whose reply the speaker was last fed
        self._lock = threading.RLock()
        self._far_end: object | None = None  # audio.farend.FarEndReference the player writes (echo cancellation)

    def attach_far_end(self, reference: object) -> None:
        """The echo canceller's far-end reference: every speaker this stage has or opens writes into it."""
        with self._lock:
            self._far_end = reference
            self._give_far_end(self._speaker)

    def _give_far_end(self, speaker: object) -> None:
        if self._far_end is not None and isinstance(speaker, FarEndWriter):
            speaker.set_far_end(self._far_end)

    # ---- inbox ----------------------------------------------------------------------------------------------
    def send(self, message: SpeechMessage) -> None:
        with self._lock:
            sp = self._speaker
            match message:
                case BeginReply(turn=turn):
                    self._reply_turn = turn if (sp is not None and self._on) else None
                    self._voiced_turn = self._reply_turn
                case SpeakText(turn=turn, text=text):
                    if sp is not None and self._on and turn == self._reply_turn:
                        self._speaking_turn = turn
                        try:
                            sp.feed(turn, text)
                        except Exception as err:  # noqa: BLE001 - speech is optional; the text goes on
                            self._error(f"speech output failed: {one_line(err)}")
                case EndOfReply(turn=turn):
                    if sp is not None and self._on and turn == self._reply_turn:
                        quietly(lambda: sp.end_reply(turn))
                case StopSpeaking(reason=reason, truncate=truncate):
                    self._stop_speaking(reason, truncate)
                case SetSpeechOutput(on=on):
                    self._set_output(on)
                case PrepareSentence(text=text):
                    prepare = getattr(sp, "prepare", None)  # the real Speaker; a stand-in may not
                    if sp is not None and self._on and callable(prepare):
                        quietly(lambda: prepare(text))
                case DiscardPrepared():
                    discard = getattr(sp, "discard_prepared", None)
                    if callable(discard):
                        quietly(discard)

    def _stop_speaking(self, reason: InterruptReason, truncate: bool) -> None:
        # The model stage may still hand out a piece or two of the reply before it sees the cancel: none of it
        # is spoken (nor left in the speaker's sentence splitter, to be said before the next reply).
        self._reply_turn = None
        sp = self._speaker
        if not truncate:
            if sp is not None and self._on:
                quietly(sp.stop)
            return
        heard: dict[int, str] = {}
        if sp is not None:
            try:
                # Every reply not yet heard to its end: with two queued (a turn typed while the last reply still
                # played), the one playing keeps what was heard and the later one nothing.
                stop_turns = getattr(sp, "stop_turns", None)
                heard = dict(stop_turns()) if callable(stop_turns) else {self._speaking_turn: sp.stop() or ""}
            except Exception as err:  # noqa: BLE001
                self._error(f"speech output failed: {one_line(err)}")
        heard.setdefault(self._speaking_turn, "")
        # The truncations are queued before the cancel, so the model stage finds them as soon as the reply
        # returns; the newest first (each is then the last reply, or one before those already cut).
        for turn in sorted(heard, reverse=True):
            self._model_control.put(TruncateReply(turn, heard[turn], reason))
        self._cancel_reply(reason)

    def _set_output(self, on: bool) -> None:
        if not on:
            self._on = False
            if self._speaker is not None:
                quietly(self._speaker.stop)
            return
        if self._speaker is not None:
            self._on = True
            return
        threading.Thread(target=self._open_speaker, name="va-tts-open", daemon=True).start()

    def _open_speaker(self) -> None:
        from voiceassist.openers import create_speaker

        try:
            speaker = create_speaker(self.config)
        except Exception as err:  # noqa: BLE001 - any failure of the optional TTS is one status line
            self._error(f"speech output unavailable: {one_line(err)}; replies stay text only")
            return
        with self._lock:
            self._speaker = speaker
            self._give_far_end(speaker)
            self._on = True

    # ---- PlaybackTimeline -----------------------------------------------------------------------------------
    def speaking(self) -> bool:
        sp = self._speaker
        if sp is None:
            return False
        try:
            return bool(sp.speaking())
        except Exception:  # noqa: BLE001 - a broken speaker counts as silent
            return False

    def output_on(self) -> bool:
        return self._speaker is not None and self._on

    def quiet_since(self) -> float | None:
        sp = self._speaker
        if sp is None:
            return None
        try:
            return sp.quiet_since()
        except Exception:  # noqa: BLE001
            return None

    # ---- SpokenReplies (the model stage's view) -------------------------------------------------------------
    def first_sound(self, turn: int, timeout: float, cancel: threading.Event | None = None) -> float | None:
        """When ``turn``'s first sample reached the output device (PortAudio DAC time, capture clock), waiting
        up to ``timeout`` s for it (see ``Speaker.first_sound``); None at once when that reply is not spoken.
        Called on the model thread, without the stage's lock (the speaker is thread-safe)."""
        sp = self._speaker
        first = getattr(sp, "first_sound", None)
        if sp is None or not callable(first) or self._voiced_turn != turn:
            return None
        try:
            t = first(turn, timeout, cancel)
        except Exception:  # noqa: BLE001 - a broken speaker: the reply simply has no voice figure
            return None
        return None if t is None else float(t)

    def heard(self, turn: int) -> str | None:
        """What was heard of ``turn``'s reply (the speaker's count, see ``Speaker.spoken_text``; "" before its
        first sound); None when that reply was not to be spoken (speech output off: its text is all there was)."""
        sp = self._speaker
        if sp is None or self._voiced_turn != turn:
            return None
        spoken_text = getattr(sp, "spoken_text", None)  # the real Speaker; a stand-in may not count
        try:
            return str(spoken_text(turn)) if callable(spoken_text) else ""
        except Exception:  # noqa: BLE001 - a broken speaker was not heard
            return ""

    def echo_overlaps(self, start_t: float, end_t: float) -> bool:
        sp = self._speaker
        if sp is None:
            return False
        try:
            return bool(sp.echo_overlaps(start_t, end_t))
        except Exception:  # noqa: BLE001 - a broken speaker: fall back on the live checks
            return False

    # ---- what the App shows ---------------------------------------------------------------------------------
    @property
    def speaker(self) -> Speaker | None:
        return self._speaker

    # ---- housekeeping thread: the speaker's errors, and "speaking" as it starts and ends --------------------
    def run(self) -> None:
        while not self._stop.wait(HOUSEKEEPING_S):
            sp = self._speaker
            errors = getattr(sp, "errors", None)  # the real Speaker's error queue; a stand-in may have none
            if isinstance(errors, queue.Queue | queue.SimpleQueue):
                while True:
                    try:
                        self._error(one_line(errors.get_nowait()))
                    except queue.Empty:
                        break
            self._on_change()

    def close(self) -> None:
        """Output last in the ordered shutdown: stop and close the speaker."""
        sp = self._speaker
        if sp is not None:
            quietly(sp.stop)
            quietly(sp.close)

    def _error(self, message: str) -> None:
        self._emit(ErrorEvent(message, "tts", t=self._clock()))
