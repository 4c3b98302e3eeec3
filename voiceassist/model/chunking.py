"""Splitting audio longer than the encoder's 30 s window into chunks (numpy only: no torch import)."""

from __future__ import annotations

import numpy as np

from voiceassist.events import SAMPLE_RATE

MAX_AUDIO_S = 30.0  # s: Qwen2-Audio's encoder window; the processor silently truncates longer audio
WINDOW = SAMPLE_RATE // 100  # samples: 10 ms energy windows when looking for the quietest point
SMOOTH = 10  # windows (100 ms) of energy averaged: a real pause beats a 20 ms gap between two words


def split_long_audio(audio: np.ndarray, max_s: float = MAX_AUDIO_S, search_s: float = 2.0) -> list[np.ndarray]:
    """Split 16 kHz ``audio`` into consecutive chunks of at most ``max_s`` seconds, each cut at the quietest
    point of its last ``search_s`` seconds (the segmenter's rule: 10 ms energy windows, averaged over 100 ms so
    that a pause wins over a short gap between words), so that a cut falls in a pause when there is one
    nearby. Audio of at most ``max_s`` comes back whole, as the only chunk."""
    limit = int(max_s * SAMPLE_RATE)
    chunks: list[np.ndarray] = []
    rest = audio
    while len(rest) > limit:
        lo = max(WINDOW, limit - int(search_s * SAMPLE_RATE))
        n = (limit - lo) // WINDOW
        if n > 0:
            seg = rest[limit - n * WINDOW : limit].astype(np.float64)
            energy = (seg**2).reshape(n, WINDOW).sum(axis=1)
            k = min(SMOOTH, n)
            # A mean over the windows that exist (no zero padding: the edges must not look quieter than they are).
            counts = np.convolve(np.ones(n), np.ones(k), mode="same")
            energy = np.convolve(energy, np.ones(k), mode="same") / counts
            quietest = n - 1 - int(np.argmin(energy[::-1]))  # the latest of equally quiet windows
            cut = limit - n * WINDOW + (quietest + 1) * WINDOW
        else:
            cut = limit
        chunks.append(rest[:cut])
        rest = rest[cut:]
    if len(rest) or not chunks:
        chunks.append(rest)
    return chunks
