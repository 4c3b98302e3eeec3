"""Known-truth audio scenes for the front-end tests: espeak phrases placed in silence or noise.

``phrase(text, voice)`` renders once per test session (espeak-ng is the slow part) through a process-wide cache
in a temporary folder. Noises: pink (from support.speech), fan hum (mains harmonics + low rumble), keyboard
clicks (short decaying broadband bursts at random intervals).
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np

from support.speech import SR, pink_noise, silence, speech_16k

_TMP = tempfile.mkdtemp(prefix="va-fe-speech-")  # espeak's WAVs; the arrays are cached in memory
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)


@functools.cache
def _phrase(text: str, voice: str, speed: int) -> np.ndarray:
    audio = speech_16k(text, _TMP, voice=voice, speed=speed)
    audio.setflags(write=False)
    return audio


def phrase(text: str, voice: str = "en-us", speed: int = 160) -> np.ndarray:
    """espeak-ng speech, 16 kHz mono float32, trimmed to its first/last sample above 0.01 (cached)."""
    return _phrase(text, voice, speed).copy()


@dataclass
class Scene:
    audio: np.ndarray  # 16 kHz mono float32
    truth: list[tuple[float, float]]  # (start, end) of each utterance's speech, s

    @property
    def duration(self) -> float:
        return len(self.audio) / SR


def build(parts: list[np.ndarray | float], group_gap_s: float = 0.0) -> Scene:
    """Concatenate speech arrays and silences (floats, s). Speech separated by a silence shorter than
    ``group_gap_s`` (an in-sentence pause) belongs to one utterance of the truth."""
    pieces, truth, pos = [], [], 0
    last_gap = None
    for p in parts:
        if isinstance(p, (int, float)):
            p = silence(float(p))
            last_gap = len(p) / SR
        else:
            start, end = pos / SR, (pos + len(p)) / SR
            if truth and last_gap is not None and last_gap < group_gap_s:
                truth[-1] = (truth[-1][0], end)
            else:
                truth.append((start, end))
            last_gap = None
        pieces.append(p)
        pos += len(p)
    return Scene(np.concatenate(pieces).astype(np.float32), truth)


def fan_hum(seconds: float, rms: float, mains_hz: float = 50.0, seed: int = 1) -> np.ndarray:
    """A fan: mains hum with harmonics, blade tone, and low-passed rumble; steady."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * SR))
    t = np.arange(n) / SR
    x = np.zeros(n)
    for h, a in ((1, 1.0), (2, 0.6), (3, 0.4), (4, 0.2), (6, 0.1)):
        x += a * np.sin(2 * np.pi * mains_hz * h * t + rng.uniform(0, 2 * np.pi))
    x += 0.3 * np.sin(2 * np.pi * 173.0 * t)  # blade-pass tone
    rumble = np.cumsum(rng.standard_normal(n))  # brown noise, high-passed by removing its drift
    rumble -= np.convolve(rumble, np.ones(801) / 801, mode="same")
    x += 0.5 * rumble / (np.std(rumble) + 1e-12)
    return (x / np.sqrt(np.mean(x**2)) * rms).astype(np.float32)


def keyboard_clicks(seconds: float, peak: float = 0.4, rate_hz: float = 7.0, seed: int = 2) -> np.ndarray:
    """Typing: 3–8 ms decaying broadband clicks at random intervals (mean ``rate_hz`` per second)."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * SR))
    x = np.zeros(n, np.float32)
    pos = int(rng.exponential(SR / rate_hz))
    while pos < n:
        length = int(rng.uniform(0.003, 0.008) * SR)
        click = rng.standard_normal(length) * np.exp(-np.arange(length) / (length / 4))
        click = click / np.abs(click).max() * peak * rng.uniform(0.5, 1.0)
        x[pos : pos + length] += click[: n - pos]
        pos += int(SR * 0.04 + rng.exponential(SR / rate_hz))
    return x


def noise(kind: str, seconds: float, rms: float = 0.02) -> np.ndarray:
    if kind == "pink":
        return pink_noise(seconds, rms, seed=3)
    if kind == "hum":
        return fan_hum(seconds, rms)
    if kind == "clicks":
        return keyboard_clicks(seconds)
    raise ValueError(kind)
