"""Full duplex over open loudspeakers (#12): the echo policy when an echo canceller runs in the capture chain.

With the assistant's voice cancelled from the microphone, speech over the reply is the user's, so:

- barge-in is on (whatever ``tts.barge_in`` says: that setting is for rooms without a canceller): speech of
  ``tts.barge_in_ms`` over playback stops the reply; the heard part stays in the conversation and what the
  user said is the next turn (the capture stage's barge-in path, unchanged);
- a shorter burst over playback (a backchannel, "mm-hm") neither stops the reply nor becomes a turn: it is
  treated like the half-duplex policy treats echo;
- no echo tail after playback: the canceller removes the room's reverberation too.

In double talk AEC3's suppressor removes whatever part of the user's speech is quieter than the echo it hides
(measured in the test room: bursts of 120-150 ms speech with 300-420 ms of suppressed output between, noise
suppression on or off alike), so the segmenter's start trigger (max(start_ms, min_speech_ms) of speech with gaps
under start_gap_ms) fires 1.5 s late or never. The barge-in therefore reads the VAD's frame verdicts itself
(``double_talk``): bursts of speech chained over gaps up to DOUBLE_TALK_GAP_S, lasting ``barge_in_s`` from the
first one's start with at least DOUBLE_TALK_MIN_S of speech in them, barge in; a burst must be at least
DOUBLE_TALK_START_S long to start a chain and DOUBLE_TALK_BURST_S to extend one (leaked echo comes in shorter
runs). A backchannel shorter than
``barge_in_s`` ends before that; single frames of residual echo never add up to DOUBLE_TALK_MIN_S.

Until the canceller has converged (the first seconds of the first reply, or after a reset), its residual echo
may still be loud: the policy then behaves exactly like the half-duplex one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from voiceassist.events import Utterance
from voiceassist.pipeline.frontend import EchoPolicy, PlaybackTimeline

DOUBLE_TALK_GAP_S = 0.5  # s of suppressed output that still joins two bursts of the user's speech (≤ 0.48 seen live)
DOUBLE_TALK_MIN_S = 0.21  # s of speech frames the bursts must hold (residual echo: single frames, 2-3 s apart)
# Residual echo that leaks through AEC3 comes as runs of 1-2 speech frames (30 ms each); the user's speech
# through the suppressor as runs of 4-11. Replayed offline on four recorded bargein runs (38 barge-ins, 15
# backchannels, ~45 replies with nobody talking: scripts/bench_bargein.py --record), short runs that started or
# extended a double talk made 7 false barge-ins in the quiet replies and stopped 3 of 15 backchannels (a run
# of leaked echo within DOUBLE_TALK_GAP_S after "Uh-huh." carried its span past barge_in_ms); with these two
# rules 1 and 0, while 13 rather than 15 of the 38 barge-ins came within barge_in_ms + 200 ms (median +50 ms).
DOUBLE_TALK_START_S = 0.12  # a double talk starts with a run of speech frames this long, s
DOUBLE_TALK_BURST_S = 0.09  # a later run counts (extends it) once it is this long, s


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
        self._dt_onset: float | None = None  # start of the first burst of the current double talk, s
        self._dt_last = float("-inf")  # end of its last speech frame, s
        self._dt_speech = 0.0  # s of speech frames in it
        self._run = 0  # consecutive speech frames up to now
        self._run_t = 0.0  # start of that run, s

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

    def double_talk(self, t: float, speech: bool, frame_s: float) -> bool:
        if not (self.enabled and self.converged() and self.playback.output_on() and self.playback.speaking()):
            self._dt_onset, self._run = None, 0
            return False
        if not speech:
            self._run = 0
            return False
        if self._run == 0:
            self._run_t = t
        self._run += 1
        run_s = self._run * frame_s
        if self._dt_onset is None or self._run_t - self._dt_last > DOUBLE_TALK_GAP_S:
            if run_s < DOUBLE_TALK_START_S - frame_s / 2:
                return False  # not (yet) a run that starts a double talk
            self._dt_onset, self._dt_speech = self._run_t, run_s  # the whole run so far
        elif run_s < DOUBLE_TALK_BURST_S - frame_s / 2:
            return False  # not (yet) a run that extends it
        elif run_s < DOUBLE_TALK_BURST_S + frame_s / 2:
            self._dt_speech += run_s  # the run has just become long enough: all its frames count
        else:
            self._dt_speech += frame_s
        self._dt_last = t + frame_s
        if self._dt_last - self._dt_onset >= self.barge_in_s and self._dt_speech >= DOUBLE_TALK_MIN_S:
            self._dt_onset, self._run = None, 0  # one barge-in per double talk
            return True
        return False
