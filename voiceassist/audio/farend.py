"""The far end for echo cancellation: what the player really wrote, on the capture clock.

- :class:`FarEndReference` — written by the speech player's output callback (a copy of each block and the
  capture-clock time its first sample is heard, from PortAudio's ``outputBufferDacTime``; nothing else happens
  on that thread), read by the capture thread as 16 kHz mono for any stretch of the capture clock.
- :class:`ArrayReference` — a recording of what was played (``voiceassist segment --reference``).

Both satisfy :class:`ReferenceSource`, which :class:`voiceassist.audio.echo.EchoCanceller` reads.
"""

from __future__ import annotations

import collections
import math
import threading
from typing import Any, Protocol

import numpy as np

from voiceassist.audio.timeline import StampTimeline
from voiceassist.events import SAMPLE_RATE

RATE = SAMPLE_RATE  # Hz: the reference is read at the capture chain's rate
HISTORY_S = 4.0  # s of far end kept (longer than any output latency + room delay we align)
# The player stamps each block from its own callback's DAC time, which jitters by the callback's scheduling
# (ms, tens of ms on a loaded machine); the samples themselves are continuous. So a run of blocks keeps its
# sample timeline, and the timeline moves only as audio/timeline.py decides (its refinement, a jump — an
# underrun put silence into the output, and what follows is heard that much later: stepped at once, confirmed
# by the next block —, or a real clock drift, one sample at a time), or a new run starts when one block is more
# than REANCHOR_S off (a restarted stream), or at the first DAC-timed block of a run anchored on a guess (the write
# time plus the nominal latency: a PulseAudio stream's first callbacks may carry no DAC time, and the guess is tens
# of ms off; within the run that error stayed in the timeline until its refinement moved it, under a delay
# measurement that had seen it: the CI flake of test_echo_devices). An untimed block inside a timed run is one
# more jittery stamp.
REANCHOR_S = 0.1  # s
JUMP_CONFIRM = 2  # blocks (20 ms each) a jump must show: the block itself and the next
INBOX_BLOCKS = 2000  # far-end blocks the callback may queue before the capture side reads (40 s at 20 ms)


class ReferenceSource(Protocol):
    """Where the far end comes from: the player's live output, or a file of what was played."""

    def read(self, t: float, n: int) -> np.ndarray:
        """``n`` 16 kHz mono float32 samples of what was heard from capture-clock time ``t`` on (0 = silence)."""
        ...

    @property
    def timed(self) -> bool:
        """The stamps come from the device's DAC clock (False: write time + nominal latency, or a guess)."""
        ...


class FarEndReference:
    """Thread-safe far-end buffer. Writer: the player's output callback (:meth:`write`, a copy and an append).
    Reader: the capture thread (:meth:`read`), which does the resampling and the bookkeeping."""

    def __init__(self, history_s: float = HISTORY_S) -> None:
        # Producer: Player._callback (append); consumer: read() on the capture thread (popleft). A deque's
        # append/popleft are atomic, so the callback never waits on the reader; when full the oldest goes.
        self._inbox: collections.deque[tuple[np.ndarray, int, float, bool]] = collections.deque(maxlen=INBOX_BLOCKS)
        self._ring = np.zeros(1 << max(12, math.ceil(math.log2(history_s * RATE))), np.float32)
        self._end = 0  # absolute 16 kHz position (round(t·RATE)) one past the last sample written
        self._run_pos = 0  # absolute position of the next resampled sample of the current run
        self._run_t = -math.inf  # capture-clock time the current run's next input sample is heard, s
        self._run_rate = 0
        self._timeline = StampTimeline(RATE, JUMP_CONFIRM)  # when the current run's timeline moves (restarted per run)
        self.reanchors = 0  # runs started (stream opened, or a stamp jumped)
        self._resampler: Any = None
        self._timed = True
        self._any = False
        self._lock = threading.Lock()  # read() may come from more than one thread (capture, status)

    # ---- writer: the player's PortAudio callback ------------------------------------------------------------
    def write(self, samples: np.ndarray, rate: int, t_heard: float, timed: bool = True) -> None:
        """Record one output block (frames, or frames × channels) heard from ``t_heard`` (capture clock, s).
        ``timed``: ``t_heard`` comes from PortAudio's DAC time (not from a nominal latency)."""
        self._inbox.append((np.array(samples, dtype=np.float32, copy=True), int(rate), float(t_heard), timed))

    # ---- reader: the capture thread -------------------------------------------------------------------------
    @property
    def timed(self) -> bool:
        return self._timed

    @property
    def jumps(self) -> int:
        """Steps of the timeline inside a run by a confirmed jump (output underruns)."""
        return self._timeline.jumps

    @property
    def moves(self) -> int:
        """All moves of the timeline inside the runs (refinements, jumps, drift steps): each makes AEC3
        re-adapt, so on one clock they should stay at one per run."""
        return self._timeline.moves

    @property
    def steps(self) -> int:
        """Moves of the far end's placement by more than a drift step: re-anchors, refinements that moved, jumps.
        A delay measured over a window that spans one mixes two placements (the echo canceller discards it)."""
        return self.reanchors + self._timeline.refine_moves + self._timeline.jumps

    @property
    def horizon(self) -> float:
        """Capture-clock time (s) up to which the far end was written, as of the last :meth:`read`: a read past it
        gets silence for sound not yet played (or not yet handed over by the player's callback)."""
        return self._end / RATE

    @property
    def held(self) -> int:
        """Drift checks where the DAC stamps asked for a slow move that the echo's measured lag did not show
        (audio/timeline.py): the stamps wandered, the echo held still, the reference stayed."""
        return self._timeline.held

    def observe_echo(self, lag_s: float) -> None:
        """The echo canceller's measurement of the echo's lag behind this reference as handed (s, its own
        shifts undone): the evidence the timeline's slow moves need (audio/timeline.py)."""
        with self._lock:
            self._timeline.observe_echo(lag_s)

    @property
    def active(self) -> bool:
        """Anything was ever written (a player is feeding this reference)."""
        return self._any or bool(self._inbox)

    def _ring_write(self, pos: int, values: np.ndarray) -> None:
        size = len(self._ring)
        values = values[-size:]
        i = pos % size
        first = min(len(values), size - i)
        self._ring[i : i + first] = values[:first]
        self._ring[: len(values) - first] = values[first:]

    def _ring_read(self, pos: int, into: np.ndarray) -> None:
        size, n = len(self._ring), len(into)
        i = pos % size
        first = min(n, size - i)
        into[:first] = self._ring[i : i + first]
        into[first:] = self._ring[: n - first]

    def _put(self, pos: int, values: np.ndarray) -> None:
        """Write 16 kHz samples at absolute position ``pos`` (zero-filling any gap since the last write)."""
        size = len(self._ring)
        if pos > self._end:  # silence between runs (the stream was closed, or a stamp jumped ahead)
            gap_from = max(self._end, pos - size)
            self._ring_write(gap_from, np.zeros(pos - gap_from, np.float32))
        if len(values):
            self._ring_write(pos + max(0, len(values) - size), values)
        self._end = max(self._end, pos + len(values))

    def _drain(self) -> None:
        from voiceassist.audio.resample import StreamingResampler

        while self._inbox:
            block, rate, t, timed = self._inbox.popleft()
            self._any, self._timed = True, timed
            dac_began = timed and not self._timeline.jumps_allowed  # the run was anchored on a guess
            if rate != self._run_rate or abs(t - self._run_t) > REANCHOR_S or dac_began:
                # A new run: the stream (re)opened, the clock jumped, or DAC times began. The old run's last few
                # ms are in the resampler's filter; they belong where that run ends.
                if self._resampler is not None:
                    tail = self._resampler.flush()
                    self._put(self._run_pos, tail)
                self._resampler = StreamingResampler(rate, 1 if block.ndim == 1 else block.shape[1])
                self._run_rate, self._run_pos, self._run_t = rate, round(t * RATE), t
                self._timeline.restart(jumps=timed)  # jumps_allowed: this run's stamps are DAC times
                self.reanchors += 1
            else:
                shift = self._timeline.update(t - self._run_t, len(block) / rate)
                if shift:
                    self._run_pos += round(shift * RATE)
                    self._run_t += shift
            out = self._resampler.process(block)
            self._put(self._run_pos, out)
            self._run_pos += len(out)
            self._run_t += len(block) / rate

    def read(self, t: float, n: int) -> np.ndarray:
        with self._lock:
            self._drain()
            start = round(t * RATE)
            out = np.zeros(n, np.float32)
            lo, hi = max(start, self._end - len(self._ring)), min(start + n, self._end)
            if hi > lo:
                self._ring_read(lo, out[lo - start : hi - start])
            return out


class ArrayReference:
    """A recording of what was played (``segment --reference``): sample 0 is heard at ``t0`` (capture clock)."""

    def __init__(self, samples: np.ndarray, t0: float) -> None:
        self.samples = np.asarray(samples, np.float32)
        self.t0 = t0

    @property
    def timed(self) -> bool:
        return True

    def read(self, t: float, n: int) -> np.ndarray:
        start = round((t - self.t0) * RATE)
        out = np.zeros(n, np.float32)  # before the start and after the end of the recording: silence
        lo, hi = max(start, 0), min(start + n, len(self.samples))
        if hi > lo:
            out[lo - start : hi - start] = self.samples[lo:hi]
        return out
