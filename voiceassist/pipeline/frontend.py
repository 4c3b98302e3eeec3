"""The capture stage's replaceable parts: front-end processors, the utterance gate, the echo and barge-in policy.

Order on the capture thread, per block (docs/architecture.md)::

    source.read → level meter → ProcessorChain (echo canceller → noise suppression → …) → Segmenter (VAD)
      → EchoPolicy (half duplex: utterances heard over the assistant's voice are dropped; barge-in)
      → TurnGate (all pass today; a wake-word gate) → turn queue

Each part is a small object constructed by the App's wiring and owned by the capture stage: it runs only on
the capture thread, so it needs no lock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from voiceassist.events import AudioBlock, Utterance
from voiceassist.pipeline.messages import ReplyEnded, StopSpeaking


@runtime_checkable
class FrameProcessor(Protocol):
    """One front-end processor: 16 kHz mono float32 block in, block of the same length and ``t`` out."""

    def process(self, block: AudioBlock) -> AudioBlock:
        """Process one block (called on the capture thread, in capture order)."""
        ...

    def reset(self) -> None:
        """Forget the stream so far (the device was reopened, a file restarted)."""
        ...


class ProcessorChain:
    """Front-end processors in order (echo canceller before noise suppression, both before the VAD)."""

    def __init__(self, processors: Sequence[FrameProcessor] = ()) -> None:
        self.processors = list(processors)

    def process(self, block: AudioBlock) -> AudioBlock:
        for p in self.processors:
            block = p.process(block)
        return block

    def reset(self) -> None:
        for p in self.processors:
            p.reset()


@dataclass(frozen=True)
class GateDecision:
    """What a gate does with one utterance: pass it on as a turn or not; optionally stop the speaker."""

    accept: bool
    stop_speaking: StopSpeaking | None = None  # e.g. a "stop" word: the capture stage sends it to the speech stage
    reason: str = ""  # why it was dropped, for the status detail


class TurnGate(Protocol):
    """Decides which utterances become turns (after the echo policy). A wake-word gate goes here."""

    def decide(self, utterance: Utterance) -> GateDecision: ...

    def on_reply_ended(self, message: ReplyEnded) -> None:
        """The model stage finished a reply (a follow-up window may open)."""
        ...


class PassAllGate:
    """Every utterance is a turn (hands-free without a wake word)."""

    def decide(self, utterance: Utterance) -> GateDecision:
        return GateDecision(True)

    def on_reply_ended(self, message: ReplyEnded) -> None:
        pass


@runtime_checkable
class PlaybackTimeline(Protocol):
    """What the speech stage publishes about its output, for the echo policy (thread-safe reads)."""

    def speaking(self) -> bool:
        """Sound is playing or queued (output on or off)."""
        ...

    def output_on(self) -> bool:
        """Replies are being spoken (``tts`` on and a speaker open)."""
        ...

    def quiet_since(self) -> float | None:
        """Capture-clock time the last sound ended, s; None if nothing was played."""
        ...

    def echo_overlaps(self, start_t: float, end_t: float) -> bool:
        """Did played sound (plus its echo tail) overlap [start_t, end_t] (capture clock, s)?"""
        ...


class EchoPolicy:
    """Half duplex: a microphone utterance that overlapped the assistant's voice (or ``tail_s`` after it) is the
    assistant's own voice, unless it barged in (``barge_in_s`` of speech over playback, with barge-in on).
    Full duplex (with an echo canceller in the chain) is another policy with the same three methods."""

    def __init__(
        self, playback: PlaybackTimeline, *, enabled: bool, tail_s: float, barge_in: bool, barge_in_s: float
    ) -> None:
        self.playback = playback
        self.enabled = enabled  # a file cannot hear the assistant speak: off for files
        self.tail_s = tail_s
        self.barge_in = barge_in
        self.barge_in_s = barge_in_s

    def audible(self, t: float) -> bool:
        """The assistant's voice may be in the microphone at ``t`` (capture clock, s)."""
        if not self.enabled:
            return False
        if self.playback.speaking():
            return True
        quiet = self.playback.quiet_since()
        return quiet is not None and t - quiet < self.tail_s

    def overlapped(self, utt: Utterance) -> bool:
        """Did the assistant's voice (plus its tail) overlap the utterance (the speech stage keeps the times)?"""
        return self.enabled and self.playback.echo_overlaps(utt.start_t, utt.end_t)

    def barges_in(self, speech_s: float) -> bool:
        """``speech_s`` of speech that started over playback interrupts the assistant now?"""
        return self.barge_in and speech_s >= self.barge_in_s and self.playback.output_on() and self.playback.speaking()

    def double_talk(self, t: float, speech: bool, frame_s: float) -> bool:
        """One VAD frame (starting at ``t``, capture clock, s) over playback: does the speech so far barge in,
        before the segmenter has started an utterance? Half duplex: never (only ``barges_in``)."""
        return False
