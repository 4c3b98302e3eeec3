"""The wake word on the capture thread: the detector as the last front-end processor, the gate behind the
segmenter, and the reply's end taken from when the assistant really fell silent.

Built by the App's wiring when ``[wake] word`` is set, owned by the capture stage (capture thread only, no
locks). Per block, in capture order::

    ProcessorChain (LinearWakeTap → echo canceller → … → WakeListener.process: hears every block, returns it
                    unchanged; the tap, with an echo canceller only, feeds a second detector the microphone less
                    the echo's linear estimate: see wake.linear for why AEC3's output alone misses wake words)
    → WakeListener.detections() → WakeGate.on_detection      (before the segmenter's events of the same block)
    → Segmenter.feed → WakeListener.route(events) → the capture stage's own handling (hearing, speculation,
      echo policy, turn queue) of what the gate lets through

The follow-up window starts when the reply is over for the user: when the model stage's ``ReplyEnded`` has come
AND the speech stage has stopped playing (``PlaybackTimeline``); until then a wake word still means "stop".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from voiceassist.events import AudioBlock
from voiceassist.wake.detector import Detection, WakeDetector
from voiceassist.wake.gate import GateMessage, WakeGate, WakeState

SAME_WORD_S = 0.5  # two detections (one per detector) this close are one wake word, s (they differ by < 0.2 s)
# While the assistant speaks with its echo cancelled, the wake word said over the reply scores lower than alone
# (AEC3's suppressor notches it, the linear branch leaves echo in it): measured live in the loudspeaker room
# (scripts/bench_wake_echo.py --live, okay_nabu, cutoff 0.85) the missed ones peaked at 0.60-0.79 through AEC3
# and 0.74-0.85 through the linear branch, while the assistant's own voice saying the wake word peaked at
# 0.02-0.05 through AEC3 (it cancels that voice) and 0.25-0.65 through the linear branch (it leaves ~12 dB of
# echo). So the cutoff drops by `[wake] over_reply_drop` while the reply plays, the linear branch's by at most
# LINEAR_MAX_DROP, which keeps its cutoff above what the assistant's own voice reached.
LINEAR_MAX_DROP = 0.15

if TYPE_CHECKING:
    from voiceassist.config import Config
    from voiceassist.pipeline.frontend import PlaybackTimeline


class WakeListener:
    """Detector + gate + reply-end timing for the live capture path (see the module docstring)."""

    def __init__(
        self,
        detector: WakeDetector,
        gate: WakeGate,
        playback: PlaybackTimeline | None = None,
        linear: WakeDetector | None = None,
    ) -> None:
        self.detector = detector
        self.gate = gate
        self.playback = playback  # None: no speech output (text only), the reply ends when the model says so
        self.linear = linear  # the detector on the linear echo canceller's output (wake.linear), or None
        self._detections: list[Detection] = []  # heard by process() / hear_linear(), not yet given to the gate
        self._last_t = float("-inf")  # the last detection passed on (from either detector), capture clock, s
        self.heard_by: dict[str, int] = {"aec": 0, "linear": 0}  # detections passed on, by the detector that fired
        self._reply_end_t: float | None = None  # the model's ReplyEnded, waiting for playback to end, s
        self._cutoffs = (detector.threshold, detector.threshold)  # (AEC3 branch, linear branch) while silent
        self._over_reply: tuple[float, float] | None = None  # ... while the reply plays (None: the same)

    @classmethod
    def from_config(cls, config: Config, playback: PlaybackTimeline | None = None) -> WakeListener:
        """ConfigError / ModelError (one line) when the word or its model is bad, or the extra is missing."""
        from voiceassist.wake.detector import build

        w = config.wake
        detector = build(w.word, w.engine, w.threshold, w.refractory_ms)
        return cls(detector, WakeGate(w.listen_s, w.follow_up_s, config.vad.min_speech_ms / 1000), playback)

    def add_linear_branch(self) -> None:
        """A second detector of the same word, fed by a LinearWakeTap (an echo canceller is in the chain)."""
        d = self.detector
        self.linear = WakeDetector(d.model, self._cutoffs[1], round(d.trigger.refractory_s * 1000))

    def lower_over_reply(self, drop: float) -> None:
        """An echo canceller hears the reply (its voice is cancelled): while it plays, the cutoffs are ``drop``
        lower (the linear branch's at most LINEAR_MAX_DROP); 0 = unchanged. Needs a playback timeline."""
        aec, lin = self._cutoffs
        self._over_reply = (aec - drop, lin - min(drop, LINEAR_MAX_DROP)) if drop > 0 else None

    def _set_cutoffs(self) -> None:
        playing = self._over_reply is not None and self.playback is not None and self.playback.speaking()
        aec, lin = (self._over_reply if playing else None) or self._cutoffs
        self.detector.trigger.threshold = aec
        if self.linear is not None:
            self.linear.trigger.threshold = lin

    @property
    def state(self) -> WakeState:
        return self.gate.state

    # ---- FrameProcessor ---------------------------------------------------------------------------------
    def process(self, block: AudioBlock) -> AudioBlock:
        """Hear the block (it goes on unchanged)."""
        self._set_cutoffs()
        self._take(self.detector.process(block), "aec")
        return block

    def hear_linear(self, block: AudioBlock) -> None:
        """The same microphone audio less the echo's linear estimate only (from LinearWakeTap)."""
        if self.linear is not None:
            self._set_cutoffs()
            self._take(self.linear.process(block), "linear")

    def _take(self, found: list[Detection], branch: str) -> None:
        """Either detector may fire first on one wake word (tens of ms apart): the other's is the same word."""
        refractory = max(self.detector.trigger.refractory_s, SAME_WORD_S)
        for d in found:
            if abs(d.t - self._last_t) < refractory:
                continue
            self._last_t = d.t
            self.heard_by[branch] += 1
            self._detections.append(d)
        self._detections.sort(key=lambda d: d.t)

    def reset(self) -> None:
        """The device was reopened: forget its audio (not the gate's windows: a person may still be talking)."""
        self.detector.reset()
        if self.linear is not None:
            self.linear.reset()
        self._detections.clear()
        self._last_t = float("-inf")

    # ---- the gate -----------------------------------------------------------------------------------------
    def detections(self, t: float, hear: bool = True) -> tuple[list[Detection], list[GateMessage]]:
        """The detections since the last call and what the gate made of them, then the clock tick at ``t``.
        ``hear`` False (muted, push-to-talk): they are dropped unheard."""
        found, self._detections = self._detections, []
        if not hear:
            found = []
        out: list[GateMessage] = []
        for d in found:
            out += self.gate.on_detection(d)
        if found:
            self._reply_end_t = None  # a stop: the reply's end no longer opens a window
        out += self._reply_step()
        out += self.gate.tick(t)
        return found, out

    def route(self, events: list) -> list[GateMessage]:
        """The segmenter's events through the gate."""
        out: list[GateMessage] = []
        for ev in events:
            out += self.gate.on_segmenter(ev)
        return out

    def press(self, t: float) -> list[GateMessage]:
        """The push-to-talk key in hands-free mode stands in for the wake word (stop, then listen)."""
        self._reply_end_t = None
        return self.gate.on_detection(Detection(t=t, word="key", probability=1.0))

    def reply_started(self) -> None:
        """A typed or file turn is being answered (audio turns come through the gate, which knows)."""
        self.gate.reply_started()

    def reply_ended(self, t: float) -> list[GateMessage]:
        """The model stage's ReplyEnded: the window opens once the assistant is also silent."""
        if not self.gate.replying:
            return []
        self._reply_end_t = t
        return self._reply_step()

    def _reply_step(self) -> list[GateMessage]:
        if self._reply_end_t is None:
            return []
        if self.playback is not None and self.playback.speaking():
            return []  # still talking: a wake word now still stops it
        quiet = self.playback.quiet_since() if self.playback is not None else None
        end = self._reply_end_t if quiet is None else max(self._reply_end_t, quiet)  # the later of the two, s
        self._reply_end_t = None
        return self.gate.reply_ended(end)
