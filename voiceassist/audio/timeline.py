"""A stream's sample timeline on the capture clock, kept from the stamps of its blocks.

Both ends of the echo path use it: the far end (audio/farend.py, the player's DAC stamps) and the microphone
(audio/sources.py, the ADC stamps). A stream's samples are continuous; its stamps are not: measured in the test
room (null sinks, one clock, the echo at a fixed sample lag throughout), the microphone's ADC stamps wandered
8 ms away from its sample count over 4 s and back, the player's DAC stamps 3 ms over 27 s. Following them moved
the reference against the microphone although the echo never moved, and AEC3 pays for every such move (measured
offline on the room's recorded echo, ERLE over 20 s after convergence, 41.9 dB unmoved: one 0.5 ms step −3 to
−5 dB, one 4 ms step −6 to −11 dB, a 200 ppm slide in 1-sample steps −7 to −10 dB, 100 ppm −1 to −4 dB). So the
timeline moves only

- once, REFINE_S after it was anchored: by the median deviation of those blocks (the first stamp may be late);
- at a jump: a deviation of more than JUMP_S on ``confirm`` blocks running that agree within JUMP_AGREE_S
  (samples lost or inserted: an underrun, an overflow), by the first of them, at once; or when the median
  deviation over the window (at least REFINE_S of it) is beyond JUMP_S (scattered stamps after an underrun);
- with a real clock drift (two sound cards: ppm, 100 ppm = 0.1 ms/s): when the median deviation over the last
  DRIFT_WINDOW_S exceeds DRIFT_S, one sample at a time, at most one per DRIFT_STEP_S (≤ 250 ppm at 16 kHz).
"""

from __future__ import annotations

import collections

import numpy as np

REFINE_S = 1.0  # s of blocks after the anchor whose median deviation refines it
JUMP_S = 0.006  # s (DAC/ADC stamps jitter by ~1 ms, more on a loaded machine)
JUMP_AGREE_S = 0.002  # s
DRIFT_WINDOW_S = 10.0  # s of deviations whose median decides a drift (stamp wander lasts seconds)
DRIFT_S = 0.005  # s: the timeline may be this far off its stamps before it follows them (AEC3 gets 20 ms lead)
DRIFT_STEP_S = 0.25  # s between drift steps of one sample (1/16000 s per 0.25 s: 250 ppm at most)


class StampTimeline:
    """Decides when a stream's timeline moves. ``update(deviation, seconds)`` per block (deviation = the block's
    stamp − where the timeline puts it, s; seconds = the block's duration) returns the shift (s, whole samples
    at ``rate``) to move the timeline by now, usually 0. ``confirm``: blocks running a jump must show.
    ``restart()`` when the stream is re-anchored (a new run): the move counters go on over every run."""

    def __init__(self, rate: int, confirm: int = 2, jumps: bool = True) -> None:
        self.rate = rate  # Hz: shifts are whole samples at this rate
        self.confirm = confirm
        self.refine_moves = 0  # refinements that moved the timeline, over every run
        self.jumps = 0  # steps by a confirmed jump, over every run
        self.drift_steps = 0  # one-sample steps following a drift, over every run
        self.restart(jumps)

    def restart(self, jumps: bool | None = None) -> None:
        """A new run, anchored afresh by its caller: the window, the pending jump and the refinement start over;
        the move counters are kept. ``jumps``: whether this run's stamps may jump (None: as before)."""
        if jumps is not None:
            self.jumps_allowed = jumps  # False for stamps that are guesses (write time + nominal latency)
        self.refined = False  # this run's anchor was refined (whether or not that moved it)
        self.refine_moved = False  # ... and that moved it
        self._devs: collections.deque[float] = collections.deque()  # deviations in the window, s
        self._durs: collections.deque[float] = collections.deque()  # their blocks' durations, s
        self._span = 0.0  # s of blocks in the window
        self._since_anchor = 0.0  # s of blocks since the anchor
        self._since_step = 0.0  # s of blocks since the last drift check
        self._pending: list[float] = []  # deviations of a jump not yet confirmed, s

    @property
    def moves(self) -> int:
        """Times the timeline moved over every run (the refinements, jumps, drift steps)."""
        return self.refine_moves + self.jumps + self.drift_steps

    def _shift(self, dev: float) -> float:
        shift = round(dev * self.rate) / self.rate
        for i in range(len(self._devs)):  # the window's deviations, against the moved timeline
            self._devs[i] -= shift
        return shift

    def update(self, dev: float, seconds: float) -> float:
        if self.jumps_allowed and abs(dev) > JUMP_S:
            pending = self._pending
            if pending and abs(dev - pending[0]) >= JUMP_AGREE_S:
                pending.clear()
            pending.append(dev)
            if len(pending) < self.confirm:
                return 0.0  # one late stamp (or a few) moves nothing, nor enters the window
            first = pending[0]
            pending.clear()
            self.jumps += 1
            self._devs.clear()  # the old deviations were of the run before the jump
            self._durs.clear()
            self._span = 0.0
            return round(first * self.rate) / self.rate
        self._pending.clear()
        self._devs.append(dev)
        self._durs.append(seconds)
        self._span += seconds
        while self._span > DRIFT_WINDOW_S and len(self._durs) > 1:
            self._span -= self._durs.popleft()
            self._devs.popleft()
        self._since_anchor += seconds
        if not self.refined:
            if self._since_anchor < REFINE_S:
                return 0.0
            self.refined = True
            self._since_step = 0.0
            shift = self._shift(float(np.median(self._devs)))
            self.refine_moved = shift != 0.0
            self.refine_moves += int(self.refine_moved)
            return shift
        self._since_step += seconds
        if self._since_step < DRIFT_STEP_S:
            return 0.0
        self._since_step = 0.0
        median = float(np.median(self._devs))
        if abs(median) <= DRIFT_S:
            return 0.0
        if abs(median) > JUMP_S and self._span >= REFINE_S:
            # a persistent offset whose stamps scatter too much to confirm a jump (a loaded machine's
            # underruns): stepped at once, as a jump, rather than crept after at 250 ppm
            self.jumps += 1
            return self._shift(median)
        self.drift_steps += 1
        return self._shift(np.sign(median) / self.rate)
