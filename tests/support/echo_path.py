"""The echo path as arrays, the pure part of the test room (tests/support/room.py), used offline too.

:class:`RoomSpec` (delay, reverberation, direct-to-reverberant ratio, echo level), :func:`impulse_response` (a
direct path, then an exponentially decaying diffuse tail with a given RT60 and direct-to-reverberant ratio),
:func:`loudspeaker` (a small speaker's soft clipping), :func:`echo_of` (the whole echo path on an array) and
:class:`PartitionedConvolver` (the same room response streamed block by block with no latency: the live room's).
All at 16 kHz mono float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SR = 16000
PART = 80  # the convolver's partition by default, samples: 5 ms, the live room's block (room.BLOCK)


@dataclass(frozen=True)
class RoomSpec:
    delay_ms: float = 60.0  # loudspeaker → microphone delay added by the room, ms (on top of the servers' own)
    rt60_s: float = 0.45  # reverberation time, s
    drr_db: float = 0.0  # direct-to-reverberant energy ratio, dB (0: a kiosk's speaker beside the microphone
    # in a hard room; a desk at arm's length is nearer −5)
    echo_gain: float = 1.0  # scale of the echo at the microphone (1.0: espeak at full level ≈ a user's speech)
    seed: int = 1


def impulse_response(rt60_s: float, drr_db: float, seed: int = 1) -> np.ndarray:
    """Unit-energy room response: a direct path at sample 0, then from 1 ms a diffuse tail that decays by
    60 dB in ``rt60_s`` (amplitude ∝ exp(−6.91·t/RT60)), ``drr_db`` below the direct path in energy."""
    rng = np.random.default_rng(seed)
    n = int(rt60_s * 1.2 * SR)
    t = np.arange(n) / SR
    tail = rng.standard_normal(n) * np.exp(-6.91 * t / rt60_s)
    tail[: SR // 1000] = 0.0
    tail /= np.sqrt(np.sum(tail**2))
    h = tail * 10 ** (-drr_db / 20)
    h[0] += 1.0
    return (h / np.sqrt(np.sum(h**2))).astype(np.float32)


def loudspeaker(x: np.ndarray) -> np.ndarray:
    """A small speaker driven hard: soft clipping (tanh), linear below ~0.2, 0.5 at most."""
    return (np.tanh(2.0 * x) / 2.0).astype(np.float32)


def echo_of(far: np.ndarray, spec: RoomSpec) -> np.ndarray:
    """The echo of ``far`` (16 kHz) at the microphone: loudspeaker → delay → room → gain; same length."""
    y = np.convolve(loudspeaker(far), impulse_response(spec.rt60_s, spec.drr_db, spec.seed))[: len(far)]
    d = int(round(spec.delay_ms * SR / 1000))
    y = np.concatenate((np.zeros(d, np.float32), y))[: len(far)]
    return (spec.echo_gain * y).astype(np.float32)


class PartitionedConvolver:
    """Streaming FIR with no latency: uniformly partitioned overlap-save. Each block of ``part`` samples comes
    out convolved with ``h`` at once; per block one FFT pair of 2·part points and len(h)/part complex
    multiply-adds (a 0.54 s response in 5 ms blocks: 108 × 81 bins)."""

    def __init__(self, h: np.ndarray, part: int = PART) -> None:
        self.part = part
        k = -(-len(h) // part)
        padded = np.zeros(k * part)
        padded[: len(h)] = h
        self.H = np.fft.rfft(padded.reshape(k, part), 2 * part, axis=1)  # one spectrum per partition of h
        self.fdl = np.zeros_like(self.H)  # spectra of the last k input blocks, a ring: newest at self.head
        self.head = 0
        self.prev = np.zeros(part)

    def process(self, x: np.ndarray) -> np.ndarray:
        """``x``: a multiple of ``part`` samples; returns as many, the convolution's next ones."""
        if len(x) % self.part:
            raise ValueError(f"blocks of {self.part} samples expected, got {len(x)}")
        out = []
        k = len(self.H)
        for i in range(0, len(x), self.part):
            seg = np.asarray(x[i : i + self.part], np.float64)
            self.head = (self.head - 1) % k
            self.fdl[self.head] = np.fft.rfft(np.concatenate((self.prev, seg)))
            self.prev = seg
            # Partition j of h meets the block j blocks old: fdl[(head + j) % k], in two contiguous runs.
            n = k - self.head
            y = (self.fdl[self.head :] * self.H[:n]).sum(axis=0) + (self.fdl[: self.head] * self.H[n:]).sum(axis=0)
            out.append(np.fft.irfft(y, 2 * self.part)[self.part :])
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)
