"""The wake gate: which of the segmenter's utterances become turns when a wake word is required.

A pure state machine, no threads and no clock of its own: it is fed the detector's :class:`Detection` s, the
segmenter's events and "a reply started / ended", each with capture-clock times, plus :meth:`WakeGate.tick`
with the current time; it returns messages in order. It sits between the segmenter and the turn queue.

Semantics (issue #13):

- the speech right after the wake word is the turn: in the same breath (the wake word and the question in one
  utterance: the audio is cut just before the question, so the wake word's own audio is never sent), or after
  a pause — speech that *starts* within ``listen_s`` of the wake word's end;
- after a reply ends, speech that starts within ``follow_up_s`` needs no wake word (0 = always needed);
- the wake word while a reply is in progress (thinking or speaking) means "stop": :class:`StopReply`, then it
  is a wake word like any other (say it alone to just stop; say it with a question to ask something else);
- any other speech is not a turn.

States (:class:`WakeState`)::

    WAITING ──wake word──► LISTENING ──speech starts in the window──► (turn) ──► WAITING, reply in progress
       ▲                      │ window over, no speech                               │ reply ends
       └──────────────────────┘◄──────── follow-up window over ◄── LISTENING ◄───────┘ (follow_up_s > 0)

Messages out, in order: the segmenter's own ``SpeechStarted`` / ``SpeechPaused`` / ``SpeechResumed`` for speech
that is (or may still be) a turn, and for each such ``SpeechStarted`` exactly one :class:`WakeTurn` or one
:class:`SpeechDiscarded`; a forwarded ``SpeechPaused`` whose utterance will not be the turn as it was is voided
by a ``SpeechResumed`` first (the model stage's rule for speculative prefills). Plus :class:`StateChanged`
and :class:`StopReply`.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

import numpy as np

from voiceassist.events import SAMPLE_RATE, SpeechPaused, SpeechResumed, SpeechStarted, Utterance
from voiceassist.wake.detector import Detection

WAKE_LAG_S = 0.5  # a detection comes this long after its word's end at most (measured 0.13-0.27 s for micro), s
# The detector fires a model-specific time after the wake word's end (median on the espeak clips of
# scripts/bench_wake.py, micro engine: hey_mycroft 50 ms, okay_nabu 150, hey_jarvis 163, alexa 211); the end is
# looked for from CUT_BEFORE_S before to CUT_AFTER_S after where that puts it (hey_mycroft often fires before the
# end of its last syllable: a search ending at the detection found the gap inside "hey … mycroft" instead).
DETECTION_LAG_S = {"hey_mycroft": 0.05, "okay_nabu": 0.15, "hey_jarvis": 0.16, "alexa": 0.21}
DEFAULT_LAG_S = 0.15  # other models (custom files, the open engine), s
CUT_BEFORE_S = 0.2  # s
CUT_AFTER_S = 0.15  # s
CUT_FRAME_S = 0.02  # frame of the quietest-point search, s
KEEP_DETECTIONS_S = 120.0  # detections older than this (behind the newest audio) are forgotten, s


class WakeState(enum.Enum):
    WAITING = "waiting"  # "waiting for wake word": speech alone is not a turn
    LISTENING = "listening"  # the next speech is a turn (after the wake word, or in the follow-up window)

    @property
    def label(self) -> str:
        """For people (status bar, plain mode)."""
        return "waiting for wake word" if self is WakeState.WAITING else "listening"


@dataclass(frozen=True)
class StateChanged:
    """The gate's state changed; ``reason``: "wake", "follow_up", "timeout", "turn", "stop"."""

    state: WakeState
    t: float  # capture clock, s
    reason: str
    until_t: float | None = None  # LISTENING: when the window closes if no speech starts, capture clock, s


@dataclass(frozen=True)
class StopReply:
    """The wake word came while a reply was in progress: stop thinking / speaking."""

    detection: Detection


@dataclass(frozen=True)
class SpeechDiscarded:
    """Speech whose ``SpeechStarted`` was forwarded is not a turn after all (it was the wake word alone)."""

    t: float  # capture clock, s


@dataclass(frozen=True)
class WakeTurn:
    """An utterance that is a turn. ``via``: "wake" (the wake word in it; its audio cut off), "listen" (speech
    after the wake word and a pause), "follow_up" (in the window after a reply)."""

    utterance: Utterance
    wake: Detection | None  # the wake word that made it a turn (None for a follow-up)
    via: str


GateMessage = SpeechStarted | SpeechPaused | SpeechResumed | WakeTurn | SpeechDiscarded | StateChanged | StopReply


def wake_end(utterance: Utterance, detection_t: float, lag_s: float = DEFAULT_LAG_S) -> float:
    """Capture-clock time at which the wake word ends inside ``utterance``: the quietest ``CUT_FRAME_S`` frame
    (the gap before the question, or the wake word's last sample when there is none), its end, searched around
    where the detector's lag ``lag_s`` puts the end (``detection_t - lag_s``, from CUT_BEFORE_S before to
    CUT_AFTER_S after). A cut exactly at the detection would lose the question's first syllable or keep the
    wake word's last, depending on the model."""
    audio = np.concatenate(utterance.chunks) if utterance.chunks else np.zeros(0, np.float32)
    frame = round(CUT_FRAME_S * SAMPLE_RATE)  # samples
    expected = round((detection_t - lag_s - utterance.start_t) * SAMPLE_RATE)  # samples into the utterance
    hi = max(0, min(len(audio), expected + round(CUT_AFTER_S * SAMPLE_RATE)))
    lo = max(0, expected - round(CUT_BEFORE_S * SAMPLE_RATE))
    if hi - lo < frame:
        return min(detection_t, utterance.start_t + hi / SAMPLE_RATE)
    n = (hi - lo) // frame
    frames = audio[lo : lo + n * frame].astype(np.float64).reshape(n, frame)
    energy = (frames**2).mean(axis=1)
    # The latest of the (near-)quietest frames: within 1 dB of the minimum counts as equally quiet, and the
    # later one leaves less of the wake word in the turn.
    quiet = np.nonzero(energy <= energy.min() * 1.26 + 1e-12)[0]
    return utterance.start_t + (lo + (int(quiet[-1]) + 1) * frame) / SAMPLE_RATE


def cut_from(utterance: Utterance, t: float) -> Utterance:
    """``utterance`` without its audio before capture-clock time ``t`` (chunks that end before it vanish)."""
    skip = max(0, round((t - utterance.start_t) * SAMPLE_RATE))
    chunks, reasons = [], []
    for chunk, reason in zip(utterance.chunks, utterance.reasons or ("silence",) * len(utterance.chunks)):
        if skip >= len(chunk):
            skip -= len(chunk)
            continue
        chunks.append(chunk[skip:])
        reasons.append(reason)
        skip = 0
    start = utterance.start_t + max(0, round((t - utterance.start_t) * SAMPLE_RATE)) / SAMPLE_RATE
    return Utterance(chunks=tuple(chunks), start_t=start, end_t=utterance.end_t, reasons=tuple(reasons))


class WakeGate:
    """Feed it everything in capture-clock order; each method returns the messages it caused, in order."""

    def __init__(self, listen_s: float, follow_up_s: float, min_turn_s: float = 0.25) -> None:
        self.listen_s = listen_s  # s after the wake word's end in which speech must start
        self.follow_up_s = follow_up_s  # s after a reply in which speech needs no wake word; 0 = off
        self.min_turn_s = min_turn_s  # speech after the wake word needed for a same-breath turn, s
        self.state = WakeState.WAITING
        self.replying = False  # a turn was handed over and its reply has not ended
        self._window_end = float("-inf")  # speech starting before this (capture clock) is a turn, s
        self._window_via = ""  # "listen" or "follow_up"
        self._window_wake: Detection | None = None  # the wake word that opened a "listen" window
        self._detections: deque[Detection] = deque()
        self._reset_utterance()

    def _reset_utterance(self) -> None:
        self._in_utterance = False
        self._onset_t = 0.0
        self._open_at_onset = False  # the speech started inside the window
        self._via = ""
        self._wake: Detection | None = None  # window's wake word at onset
        self._started = False  # its SpeechStarted was forwarded
        self._paused: tuple[Utterance, WakeTurn] | None = None  # forwarded SpeechPaused: (source, its turn)

    # ---- helpers ----------------------------------------------------------------------------------------
    def _set(self, state: WakeState, t: float, reason: str, until: float | None = None) -> list[GateMessage]:
        if state is self.state and reason not in ("wake", "follow_up"):
            return []
        self.state = state
        return [StateChanged(state, t, reason, until)]

    def _decide(self, utterance: Utterance) -> WakeTurn | None:
        """The turn this utterance makes, or None. Deterministic: the same utterance and detections give an equal
        result, so a forwarded SpeechPaused stays valid unless a detection arrived since."""
        inside = [d for d in self._detections if utterance.start_t <= d.t <= utterance.end_t + WAKE_LAG_S]
        if inside:
            wake = inside[-1]  # the wake word said twice: the turn follows the last one
            lag = DETECTION_LAG_S.get(wake.word, DEFAULT_LAG_S)
            cut = min(wake_end(utterance, wake.t, lag), utterance.end_t)
            if utterance.end_t - cut >= self.min_turn_s:
                return WakeTurn(cut_from(utterance, cut), wake, "wake")
            return None  # the wake word alone: its window is open, the next speech is the turn
        if self._open_at_onset:
            return WakeTurn(utterance, self._wake, self._via)
        return None

    # ---- inputs -----------------------------------------------------------------------------------------
    def on_detection(self, detection: Detection) -> list[GateMessage]:
        """The detector heard the wake word (or a key stands in for it)."""
        out: list[GateMessage] = []
        self._detections.append(detection)
        while self._detections and self._detections[0].t < detection.t - KEEP_DETECTIONS_S:
            self._detections.popleft()
        if self.replying:
            self.replying = False
            out.append(StopReply(detection))
        self._window_end = detection.t + self.listen_s
        self._window_via, self._window_wake = "listen", detection
        out += self._set(WakeState.LISTENING, detection.t, "wake", self._window_end)
        return out

    def on_segmenter(self, event: object) -> list[GateMessage]:
        """One segmenter event (SpeechStarted / SpeechPaused / SpeechResumed / Utterance)."""
        if isinstance(event, SpeechStarted):
            self._reset_utterance()
            self._in_utterance, self._onset_t = True, event.t
            if event.t <= self._window_end and not self.replying:
                self._open_at_onset, self._via, self._wake = True, self._window_via, self._window_wake
                self._started = True
                return [event]
            return []
        if isinstance(event, SpeechPaused):
            turn = self._decide(event.utterance)
            if turn is None:
                return []
            out: list[GateMessage] = []
            if not self._started:
                self._started = True
                out.append(SpeechStarted(max(self._onset_t, turn.utterance.start_t)))
            self._paused = (event.utterance, turn)
            out.append(SpeechPaused(turn.utterance))
            return out
        if isinstance(event, SpeechResumed):
            if self._paused is None:
                return []
            self._paused = None
            return [event]
        if isinstance(event, Utterance):
            return self._on_utterance(event)
        return []

    def _on_utterance(self, utterance: Utterance) -> list[GateMessage]:
        turn = self._decide(utterance)
        out: list[GateMessage] = []
        if self._paused is not None:
            source, paused_turn = self._paused
            same = turn is not None and (turn.wake, turn.via) == (paused_turn.wake, paused_turn.via)
            if same and source is utterance:
                turn = paused_turn  # the very object the speculation was made from
            else:
                out.append(SpeechResumed(utterance.end_t))  # the forwarded pause is void
        started = self._started
        self._reset_utterance()
        if turn is None:
            if started:
                out.append(SpeechDiscarded(utterance.end_t))
            if self.state is WakeState.LISTENING and utterance.end_t > self._window_end:
                out += self._set(WakeState.WAITING, utterance.end_t, "timeout")
            return out
        if not started:
            out.append(SpeechStarted(turn.utterance.start_t))
        out.append(turn)
        self.replying = True
        self._window_end, self._window_via, self._window_wake = float("-inf"), "", None
        # A detection used by this turn must not make a later utterance a turn too.
        self._detections = deque(d for d in self._detections if d.t > utterance.end_t + WAKE_LAG_S)
        out += self._set(WakeState.WAITING, utterance.end_t, "turn")
        return out

    def reply_started(self) -> None:
        """A turn that did not pass the gate (typed, push-to-talk key) is being answered."""
        self.replying = True
        self._window_end = float("-inf")

    def reply_ended(self, t: float) -> list[GateMessage]:
        """The reply (or a failed turn) ended at capture-clock ``t``: open the follow-up window."""
        if not self.replying:
            return []  # already stopped by the wake word
        self.replying = False
        if self.follow_up_s > 0:
            self._window_end, self._window_via, self._window_wake = t + self.follow_up_s, "follow_up", None
            return self._set(WakeState.LISTENING, t, "follow_up", self._window_end)
        return self._set(WakeState.WAITING, t, "turn")

    def stopped(self, t: float) -> list[GateMessage]:
        """The reply was stopped by other means (Ctrl-C, /reset): no follow-up window."""
        self.replying = False
        self._window_end = float("-inf")
        return self._set(WakeState.WAITING, t, "stop")

    def tick(self, t: float) -> list[GateMessage]:
        """The time is now ``t`` (capture clock): close a window that has passed with no speech started."""
        in_window_speech = self._in_utterance and self._open_at_onset  # a turn in progress keeps its window
        if self.state is WakeState.LISTENING and not in_window_speech and t > self._window_end:
            return self._set(WakeState.WAITING, t, "timeout")
        return []
