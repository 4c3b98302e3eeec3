"""Speech whose truth is known: espeak-ng WAVs, silences, noise mixed at a known SNR."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

SR = 16000


def espeak(text: str, path: str | Path, voice: str = "en-us", speed: int = 160, pitch: int = 50) -> Path:
    """Write ``text`` spoken by espeak-ng to ``path`` (22.05 kHz mono WAV) and return the path."""
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed: run scripts/test, which installs it")
    path = Path(path)
    subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(path), text],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return path


def speech_16k(text: str, tmp: str | Path, voice: str = "en-us", speed: int = 160) -> np.ndarray:
    """espeak-ng speech as 16 kHz mono float32, with espeak's own leading/trailing silence trimmed."""
    import soundfile as sf
    import soxr

    wav = espeak(text, Path(tmp) / f"espeak-{abs(hash((text, voice, speed)))}.wav", voice, speed)
    data, sr = sf.read(str(wav), dtype="float32")
    audio = soxr.resample(data, sr, SR).astype(np.float32)
    active = np.flatnonzero(np.abs(audio) > 0.01)
    return audio[active[0] : active[-1] + 1] if len(active) else audio


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(round(seconds * SR)), dtype=np.float32)


def pink_noise(seconds: float, rms: float, seed: int = 0) -> np.ndarray:
    """Pink (1/f) noise of the given RMS level."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * SR))
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / SR)
    spectrum[1:] /= np.sqrt(freqs[1:])
    spectrum[0] = 0
    x = np.fft.irfft(spectrum, n)
    return (x / (np.sqrt(np.mean(x**2)) + 1e-12) * rms).astype(np.float32)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.asarray(x, dtype=np.float64) ** 2)))


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """Add ``noise`` scaled so that speech RMS / noise RMS is ``snr_db`` (speech RMS over its active part)."""
    active = speech[np.abs(speech) > 0.01]
    scale = rms(active) / (rms(noise) * 10 ** (snr_db / 20) + 1e-12)
    n = noise[: len(speech)] if len(noise) >= len(speech) else np.resize(noise, len(speech))
    return (speech + scale * n).astype(np.float32)


def speech_wav(path: str | Path, *parts: str | float, **voice: Any) -> Path:
    """A 16 kHz WAV at ``path`` of espeak-ng phrases (str; ``voice``: speech_16k's voice/speed) and silences
    (a number, s), in order; returns the path."""
    import soundfile as sf

    path = Path(path)
    audio = [speech_16k(p, path.parent, **voice) if isinstance(p, str) else silence(p) for p in parts]
    sf.write(str(path), np.concatenate(audio), SR)
    return path
