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

Where the echo of the stream is measured (the canceller's GCC-PHAT lag, ``observe_echo``: the far end's, and the
microphone's negated, since a late microphone makes the lag look longer), the slow moves — drift steps and a
persistent offset — also need the echo to agree: the stamps alone are not evidence enough. Measured in the room
(one clock, 3 minutes of replies): the player's DAC stamps walked 19 ms from the sample count while the echo's
lag held within 0.7 ms; following them took 216 one-sample steps, moved the reference against a steady echo (the
lag wandered 75–88 ms) and cost the linear canceller's ERLE 16.9 → 4.3 dB (median). Two sound cards really
drift: the echo's lag then moves with the stamps, and the timeline follows. The microphone's ADC stamps walk the
same way: in scripts/bench_aec.py's 150 ms room (2026-12-08) following them took 3–6 moves in 25 s in 6 of 10
runs and ERLE fell to 25.6–35.6 dB; held by the echo's evidence, 39.8–43.6 dB in 3 of 3 (BENCHMARKS.md). With
no echo measured (nothing heard yet, a headset, no canceller) the stamps decide alone.
Confirmed jumps need no echo: they are samples lost or inserted, which the echo shows only after the fact.
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
# The echo's evidence. GCC-PHAT at 4 kHz measures in 0.25 ms steps; on a steady path its lag spread 0.7 ms.
# espeak's rhythm gives it false peaks now and then (hundreds of ms off): the median of ECHO_MEDIAN runs.
ECHO_MEDIAN = 3  # measurements whose median is the echo's lag (the first ECHO_MEDIAN set the baseline)
ECHO_CONFIRM_S = 0.001  # s the echo must have moved, the way the stamps say, for a drift step
ECHO_AGREE = 0.5  # a persistent offset is stepped when the echo moved by at least this share of it


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
        self.held = 0  # drift checks where the stamps asked for a slow move the echo did not show, over every run
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
        self._level = 0.0  # s: the window's median deviation at the last check (against the moved timeline)
        self._moved = 0.0  # s the timeline moved in this run (refinement, jumps, steps)
        # the echo's lag as if the timeline had not moved (measured lag + _moved then), s, the latest few
        self._echo: collections.deque[float] = collections.deque(maxlen=ECHO_MEDIAN)
        self._echo_base: float | None = None  # the echo's lag against the timeline when first measured, s

    def observe_echo(self, lag_s: float) -> None:
        """A believable measurement of the echo's lag behind this stream as it was placed (s; larger = the echo
        comes later than the timeline puts its sound). Slow moves then need the echo to agree (module doc)."""
        self._echo.append(lag_s + self._moved)
        if self._echo_base is None and len(self._echo) == ECHO_MEDIAN:
            self._echo_base = float(np.median(self._echo)) - self._moved

    def _echo_unfollowed(self) -> float | None:
        """How far the echo has moved from its baseline that the timeline has not followed (s), or None: no
        echo measured in this run."""
        if self._echo_base is None:
            return None
        return float(np.median(self._echo)) - self._moved - self._echo_base

    @property
    def moves(self) -> int:
        """Times the timeline moved over every run (the refinements, jumps, drift steps)."""
        return self.refine_moves + self.jumps + self.drift_steps

    def _shift(self, dev: float) -> float:
        shift = round(dev * self.rate) / self.rate
        self._moved += shift
        for i in range(len(self._devs)):  # the window's deviations, against the moved timeline
            self._devs[i] -= shift
        return shift

    def update(self, dev: float, seconds: float) -> float:
        # A jump is judged against where the stamps have lately been (the window's median at the last check),
        # not against the timeline: a held walk (above) must not turn into a "jump" once it passes JUMP_S.
        if self.jumps_allowed and abs(dev - self._level) > JUMP_S:
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
            shift = round((first - self._level) * self.rate) / self.rate
            self._moved += shift
            return shift
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
            median = float(np.median(self._devs))
            shift = self._shift(median)
            self._level = median - shift  # the window's median against the refined timeline
            self.refine_moved = shift != 0.0
            self.refine_moves += int(self.refine_moved)
            return shift
        self._since_step += seconds
        if self._since_step < DRIFT_STEP_S:
            return 0.0
        self._since_step = 0.0
        median = self._level = float(np.median(self._devs))
        if abs(median) <= DRIFT_S:
            return 0.0
        echo = self._echo_unfollowed()
        if abs(median) > JUMP_S and self._span >= REFINE_S:
            # a persistent offset whose stamps scatter too much to confirm a jump (a loaded machine's
            # underruns): stepped at once, as a jump, rather than crept after at 250 ppm
            if echo is not None and not echo * np.sign(median) >= ECHO_AGREE * abs(median):
                self.held += 1
                return 0.0
            self.jumps += 1
            self._level = 0.0
            return self._shift(median)
        if echo is not None and not echo * np.sign(median) >= ECHO_CONFIRM_S:
            self.held += 1
            return 0.0
        self.drift_steps += 1
        shift = self._shift(np.sign(median) / self.rate)
        self._level -= shift
        return shift
