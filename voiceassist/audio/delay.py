"""The echo's delay behind its reference, measured: GCC-PHAT of the microphone against the far end.

Used by :class:`voiceassist.audio.echo.EchoCanceller` for ``status`` and to decide when the reference must be
re-aligned (see that module's docstring).
"""

from __future__ import annotations

import math

import numpy as np

from voiceassist.events import SAMPLE_RATE

RATE = SAMPLE_RATE  # Hz
FRAME = RATE // 100  # 160 samples: the 10 ms frames the far-end activity is counted in
EPS = 1e-10
# Delay measurement (GCC-PHAT of the microphone against the reference as handed to AEC3).
# The window is 2 s and the search ±1 s: device-stamped paths of 580–720 ms were measured in the test room
# (PulseAudio's input latency "high", the room's buffers), and a 1 s window holds too little of such an echo.
# espeak's regular rhythm gives false peaks of 8–15 × the mean; true ones were 15–100 ×.
XCORR_S = 2.0  # s of audio per measurement
XCORR_EVERY_S = 1.0  # s between measurements (only while the far end is playing)
XCORR_MAX_MS = 1000.0  # largest delay searched, ms (either sign)
XCORR_MIN_PEAK = 10.0  # peak / mean |correlation| needed to believe a measurement
# The correlation runs at RATE / XCORR_DECIMATE (4 kHz: 0.25 ms resolution, speech's 0–2 kHz, where its phase is
# most reliable): a 16k-point FFT instead of a 64k one, the wrapper's largest cost (measured 0.006 of a core).
XCORR_DECIMATE = 4


def _decimate(x: np.ndarray) -> np.ndarray:
    """The mean of each XCORR_DECIMATE samples running: the same float32 sums, in the same order, as
    ``x.reshape(-1, XCORR_DECIMATE).mean(axis=1)``, ~9× faster (numpy reduces a 4-long axis slowly)."""
    out = x[0::XCORR_DECIMATE] + x[1::XCORR_DECIMATE]
    for k in range(2, XCORR_DECIMATE):
        out += x[k::XCORR_DECIMATE]
    out /= np.float32(XCORR_DECIMATE)
    return out


class DelayEstimator:
    """GCC-PHAT of the microphone against the reference: the delay of the echo behind the reference, in ms.

    A plain cross-correlation is dominated by speech's low-frequency energy and smears over the room's
    reverberation; the phase transform whitens both, so the direct path stands out as a sharp peak."""

    def __init__(self) -> None:
        n = round(XCORR_S * RATE) // XCORR_DECIMATE * XCORR_DECIMATE
        self._near = np.zeros(n, np.float32)  # rings of the last XCORR_S, written at _pos
        self._far = np.zeros(n, np.float32)
        self._pos = 0
        self._fft = 1 << math.ceil(math.log2(2 * n // XCORR_DECIMATE))
        self._max_lag = round(XCORR_MAX_MS * RATE / 1000 / XCORR_DECIMATE)
        self._since = 0  # samples since the last measurement
        self._far_active = 0  # far-end-active frames in the window
        self.delay_ms: float | None = None  # the last believable measurement
        self.measurements = 0

    def discard(self) -> None:
        """Forget the window (the reference or the microphone was just placed anew: a window spanning the move
        would measure the old placement's delay, or a mix). The last measurement stays, for ``status``."""
        self._near[:] = 0.0
        self._far[:] = 0.0
        self._since = self._far_active = 0

    def push(
        self, near: np.ndarray, far: np.ndarray, far_active_frames: int, every_s: float = XCORR_EVERY_S
    ) -> float | None:
        """Add a stretch of both signals; returns a new measurement (ms) when one was made and believable
        (one each ``every_s`` of audio at most)."""
        n = len(self._near)
        for ring, x in ((self._near, near[-n:]), (self._far, far[-n:])):
            i = self._pos
            first = min(len(x), n - i)
            ring[i : i + first] = x[:first]
            ring[: len(x) - first] = x[first:]
        self._pos = (self._pos + min(len(near), n)) % n
        self._far_active += far_active_frames
        self._since += len(near)
        if self._since < every_s * RATE:
            return None
        enough = self._far_active * FRAME >= 0.5 * self._since  # far end playing in half of the time since the last
        self._since, self._far_active = 0, 0
        if not enough:
            return None
        # Oldest first, decimated only now (once a measurement, not per block): averaging XCORR_DECIMATE samples
        # is a crude low-pass, enough for the phase of speech's 0–2 kHz.
        near_w, far_w = _decimate(np.roll(self._near, -self._pos)), _decimate(np.roll(self._far, -self._pos))
        spec = np.fft.rfft(near_w, self._fft) * np.conj(np.fft.rfft(far_w, self._fft))
        corr = np.fft.irfft(spec / (np.abs(spec) + EPS), self._fft)
        lags = np.concatenate((corr[-self._max_lag :], corr[: self._max_lag + 1]))  # lag −max … +max
        mag = np.abs(lags)
        i = int(np.argmax(mag))
        if mag[i] < XCORR_MIN_PEAK * (float(mag.mean()) + EPS) or abs(i - self._max_lag) >= self._max_lag - 1:
            return None  # no clear peak, or one at the edge of the search (the true delay is not inside it)
        self.delay_ms = (i - self._max_lag) * XCORR_DECIMATE * 1000 / RATE
        self.measurements += 1
        return self.delay_ms
