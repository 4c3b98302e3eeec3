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
        self.linear = WakeDetector(d.model, d.threshold, round(d.trigger.refractory_s * 1000))

    @property
    def state(self) -> WakeState:
        return self.gate.state

    # ---- FrameProcessor ---------------------------------------------------------------------------------
    def process(self, block: AudioBlock) -> AudioBlock:
        """Hear the block (it goes on unchanged)."""
        self._take(self.detector.process(block), "aec")
        return block

    def hear_linear(self, block: AudioBlock) -> None:
        """The same microphone audio less the echo's linear estimate only (from LinearWakeTap)."""
        if self.linear is not None:
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
