"""The test room's sample counts (tests/support/room.py): when a stream's count on the capture clock follows its
stamps and when it holds. Pure (no audio, no process), so tests/test_room.py runs it on made-up stamps.

A count that follows every stamp moves the room's echo path with each late callback; one that never follows loses
the echo for good after the server drops or inserts samples behind the streams' back. The rules below, and the
measurements they were chosen on, are what the room does in between.
"""

from __future__ import annotations

import collections
import math
import time

import numpy as np

from support.echo_path import SR

# A stamp this far from the stamps' recent level (the median deviation of the last LEVEL_BLOCKS blocks, taken
# every LEVEL_EVERY blocks) is a jump: a glitch the flags missed, s. Relative to the level, not to the count,
# because the stamps walk: in every 8-min bench_bargein run (2026-12-07) the input's stamps walked to ~20 ms off a
# count that kept time (those of the assistant's sink walk with them; the samples do not), and a rule on the
# count's own deviation re-anchored there once or more per run, moving the echo path for nothing (the canceller's
# delay stepped 60.8 -> 67.2 ms over one run's barge-ins; with the level it stayed at 60.8 ms, side by side).
# Only the input is judged so (``walks``): the output's 20 ms steps keep its deviation near 0.
REANCHOR_S = 0.02
LEVEL_BLOCKS, LEVEL_EVERY = 400, 50  # 1–2 s of blocks; the median costs ~10 µs, hence not every block
# One stamp can be off by up to ~18 ms on a loaded machine (ALSA's pulse plugin's latency figure; 0.05 ms when
# idle): an anchor is refined once, REFINE_BLOCKS after it, by the median deviation of those blocks' stamps.
REFINE_BLOCKS = 60
# A smaller deviation that persists is real (the server dropped or inserted samples behind the streams' back, no
# flag raised): all stamps over a side's confirm time more than STEP_S off and agreeing within its agree spread
# move the count by their median. Single late stamps do not, and neither does a busy spell's scatter: with 3 ms
# over 50 ms agreeing within 2 ms on both sides (the first rule) a busy spell's late stamps moved the count and the
# next quiet one moved it back (the echo path stepped by ~3 ms every few seconds on a recorded bargein run).
# What a loaded 2-core machine does (scripts/trace_room.py, 2026-12-04: 26 stall runs, 18 beside two busy loops):
# - the output's stamps agree within 0.1 ms; after a callback ran ~10 ms late the server plays 5.4–7.4 ms of
#   silence unflagged: every later stamp is that much off, and the echo at the microphone moved by as much until
#   the count followed (with the rule before this one, beyond 5 ms for 2 s agreeing within 2 ms: 2 s or more of
#   a path 6 ms off, test_room's flakes). So the output follows after 20 ms agreeing within 0.5 ms.
# - the input's stamps scatter more (single ones up to 5 ms early) and for ~150 ms after the room's own stall,
#   while it reads the backlog, sit ~4.5 ms early and come back (the echo did not move): following them would
#   move the path and move it back, so the input asks for 300 ms (never met by that backlog in the 26 runs).
# - the input's slower rule (0.3 s) still moved the path in long runs: in bench_bargein (2026-12-07, 8 min) the
#   input stepped 7–15 times, the echo slid with the player's own stamp walk (the stamps of the assistant's sink
#   and of its monitor walk together; the samples do not), and the product followed it with hundreds of drift
#   steps: 2 false barge-ins and a backchannel stop in 10 replies, against none with the rule before, side by
#   side. The input is back on that rule (beyond 5 ms for 2 s, agreeing within 2 ms), which the stall's backlog
#   (~4.5 ms, 150 ms) never meets. The output keeps its fast one; its stamps' slow walk does meet it once it is
#   3 ms off (4–21 output steps in an 8-min run, 2026-12-07; BENCHMARKS.md, "The room's input no longer
#   re-anchors on its stamps' walk"): left so, since that rule is what holds test_room's stall scenario (a
#   level-relative output, tried 2026-12-08, re-anchored without an underflow: branch experiment/level-relative-room).
STEP_S = 0.003  # the output's threshold (the input's is in IN_STEP)
IN_STEP, OUT_STEP = (0.005, 2.0, 0.002), (STEP_S, 0.02, 0.0005)  # (threshold, confirm time, agree spread), s
TRACE_BLOCKS = 16000  # blocks of stamps kept for ``trace`` (80 s at 5 ms)


class SampleClock:
    """A stream's sample count on the capture clock: ``idx`` is the ring index (``round(t · SR)``) of its next
    sample. It follows the stamps only at an anchor (the first block, a flagged over/underflow, a stamp more than
    REANCHOR_S off the count or, with ``walks``, off the recent level of the stamps' deviations), refined once by
    the median deviation of the next REFINE_BLOCKS stamps, and moved by a deviation that persists, agreeing, by
    ``step`` = (threshold, confirm time, agree spread), s."""

    def __init__(self, step: tuple[float, float, float], walks: bool = False) -> None:
        # a deviation beyond the threshold that persists this long, this close, is followed, s
        self.step_s, self.confirm_s, self.agree_s = step
        # whether a jump is judged against the stamps' recent level (the input's stamps walk) or the count (the
        # output's rule, unchanged: its 20 ms steps keep its deviation near 0 anyway)
        self.walks = walks
        self.idx: int | None = None
        self.devs: list[float] = []  # stamp − count of the blocks since the anchor, until refined, s
        self.reanchors = 0
        self.steps = 0  # confirmed persistent deviations followed
        self.off: list[float] = []  # the latest run of deviations beyond the threshold, s
        self.changed_at = 0.0  # capture clock of the last anchor or refinement, s
        self.max_dev = 0.0  # largest |stamp − count| that did not re-anchor, s
        self.recent: collections.deque[float] = collections.deque(maxlen=LEVEL_BLOCKS)  # stamp − count, s
        self.level = 0.0  # median of ``recent``, renewed every LEVEL_EVERY blocks, s
        self.since_level = 0  # blocks since ``level`` was renewed
        # (stamp, stamp − count before this block's rule, s) of the latest blocks, for ``trace`` (diagnosis)
        self.trace: collections.deque[tuple[float, float]] = collections.deque(maxlen=TRACE_BLOCKS)

    def block(self, t: float, frames: int, flagged: bool) -> int:
        """The ring index of this block's first sample (``t``: its stamp on the capture clock)."""
        dev = math.inf if self.idx is None else t - self.idx / SR
        self.trace.append((t, dev))
        if flagged or abs(dev - self.level) > REANCHOR_S:
            self.idx, self.devs, self.off = round(t * SR), [], []
            self._new_level()
            self.reanchors += 1
            self.changed_at = time.monotonic()
        else:
            self.max_dev = max(self.max_dev, abs(dev))
            if self.walks:  # the output's level stays 0: nothing to keep in its callback
                self.recent.append(dev)
                self.since_level += 1
                if self.since_level >= LEVEL_EVERY:
                    self.level, self.since_level = float(np.median(self.recent)), 0
            if abs(dev) > self.step_s and self.settled:
                self.off.append(dev)
            else:
                self.off.clear()
            if len(self.off) * frames >= self.confirm_s * SR and max(self.off) - min(self.off) < self.agree_s:
                self.idx = int(self.idx or 0) + round(float(np.median(self.off)) * SR)
                self.off = []
                self._new_level()
                self.steps += 1
                self.changed_at = time.monotonic()
            elif len(self.off) * frames >= self.confirm_s * SR:
                del self.off[0]
            if len(self.devs) < REFINE_BLOCKS:
                self.devs.append(dev)
                if len(self.devs) == REFINE_BLOCKS:
                    shift = round(float(np.median(self.devs)) * SR)
                    if shift:
                        self.idx = int(self.idx or 0) + shift
                        self._new_level()
                        self.changed_at = time.monotonic()
        i = int(self.idx or 0)
        self.idx = i + frames
        return i

    @property
    def settled(self) -> bool:
        return len(self.devs) >= REFINE_BLOCKS

    def _new_level(self) -> None:
        """The count moved: the deviations seen so far are against the old one."""
        self.recent.clear()
        self.level, self.since_level = 0.0, 0
