"""Full duplex over open loudspeakers (#12): the echo policy when an echo canceller runs in the capture chain.

With the assistant's voice cancelled from the microphone, speech over the reply is the user's, so:

- barge-in is on (whatever ``tts.barge_in`` says: that setting is for rooms without a canceller): speech of
  ``tts.barge_in_ms`` over playback stops the reply; the heard part stays in the conversation and what the
  user said is the next turn (the capture stage's barge-in path, unchanged);
- a shorter burst over playback (a backchannel, "mm-hm") neither stops the reply nor becomes a turn: it is
  treated like the half-duplex policy treats echo;
- no echo tail after playback: the canceller removes the room's reverberation too.

Until the canceller has converged (the first seconds of the first reply, or after a reset), its residual echo
may still be loud: the policy then behaves exactly like the half-duplex one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from voiceassist.events import Utterance
from voiceassist.pipeline.frontend import EchoPolicy, PlaybackTimeline


@runtime_checkable
class EchoSensing(Protocol):
    """A front-end processor that knows when the far end plays (``audio.echo.EchoCanceller``): the capture
    stage passes ``echo_active`` on to the Segmenter and shows the ``notices``."""

    @property
    def echo_active(self) -> bool: ...

    def notices(self) -> list[str]: ...


class FullDuplexPolicy(EchoPolicy):
    """EchoPolicy's three methods, full duplex while ``converged()`` (see the module docstring)."""

    def __init__(
        self,
        playback: PlaybackTimeline,
        converged: Callable[[], bool],
        *,
        enabled: bool,
        tail_s: float,
        barge_in: bool,
        barge_in_s: float,
    ) -> None:
        super().__init__(playback, enabled=enabled, tail_s=tail_s, barge_in=barge_in, barge_in_s=barge_in_s)
        self.converged = converged

    def audible(self, t: float) -> bool:
        if not self.enabled:
            return False
        if self.converged():
            return self.playback.speaking()  # speech over playback: a barge-in or a backchannel; no tail
        return super().audible(t)

    def overlapped(self, utt: Utterance) -> bool:
        if self.enabled and self.converged():
            return False  # speech after the reply ended is the user's, even inside the old echo tail
        return super().overlapped(utt)

    def barges_in(self, speech_s: float) -> bool:
        if self.enabled and self.converged():
            return speech_s >= self.barge_in_s and self.playback.output_on() and self.playback.speaking()
        return super().barges_in(speech_s)
