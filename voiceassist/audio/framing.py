"""Blocks of any length cut into whole frames, the rest carried to the next block, with capture times.

The echo canceller (audio/echo.py: WebRTC's 10 ms frames) and the wake word's linear canceller (wake/linear.py:
SpeexDSP's frames of the same size) both need exactly this; written by hand because it is four lines of numpy that
no audio library exposes on its own.
"""

from __future__ import annotations

import numpy as np

from voiceassist.events import SAMPLE_RATE, AudioBlock


class FrameCarry:
    """``whole(block)``: the carried samples and ``block``'s, cut to a whole number of ``frame``-sample frames,
    with the capture time (s) of their first sample; what is left waits for the next block."""

    def __init__(self, frame: int, rate: int = SAMPLE_RATE) -> None:
        self.frame = frame  # samples per frame
        self.rate = rate  # Hz
        self.samples = np.zeros(0, np.float32)  # < frame samples waiting for a whole frame
        self.t = 0.0  # capture-clock time of the first carried sample, s (by the block it came with)

    def whole(self, block: AudioBlock) -> tuple[np.ndarray, float]:
        samples = np.asarray(block.samples, np.float32).reshape(-1)
        if len(self.samples):
            # The carried samples come just before the block's: from its stamp, so that a move of the source's
            # timeline (a jump, a drift step) applies with this block, not only when the carry happens to empty
            # (measured: the microphone's moves reached the echo canceller's reference in steps seconds late).
            data, t = np.concatenate((self.samples, samples)), float(block.t) - len(self.samples) / self.rate
        else:
            data, t = samples, float(block.t)
        n = len(data) // self.frame * self.frame
        self.samples, self.t = data[n:].copy(), t + n / self.rate
        return data[:n], t

    def clear(self) -> None:
        self.samples = np.zeros(0, np.float32)
