"""Hard cases for the VAD, with known truth: babble, music, knocks, a quiet distant talker (all 16 kHz mono).

Everything is synthesised here (espeak-ng speech, numpy): no recordings are shipped. Each generator is
deterministic for a given seed.
"""

from __future__ import annotations

import numpy as np

from support.audio_scenes import Scene, build, phrase
from support.echo_path import impulse_response
from support.speech import SR, mix_at_snr, pink_noise, rms

QUESTIONS = [
    ("What time is it in Tokyo right now?", "en-us"),
    ("Thank you. Could you read me the news headlines?", "en-gb"),
    ("Set an alarm for seven thirty tomorrow morning.", "en-us+f3"),
    ("How far is it from Paris to Berlin by train?", "en-gb-scotland"),
    ("Please remind me to call my sister on Sunday.", "en-us+m3"),
    ("Is it going to rain this afternoon?", "en-gb+f2"),
]
BABBLE_TEXTS = [
    "and then we went down to the market and bought some bread and cheese for the picnic",
    "the meeting was moved to Thursday because half of the team was still away on holiday",
    "I told him that the car needed new tyres before the winter but he did not listen",
    "we should probably order more paper for the printer before the end of the month",
    "my daughter is learning to play the violin and practises every evening after dinner",
    "they say the new restaurant on the corner is very good but quite expensive",
]


def questions(gap_s: float = 1.5, lead_s: float = 2.0, n: int = 6) -> Scene:
    """``n`` espeak questions (several voices) separated by ``gap_s`` of silence, after ``lead_s``."""
    parts: list = [lead_s]
    for text, voice in QUESTIONS[:n]:
        parts += [phrase(text, voice), gap_s]
    return build(parts, group_gap_s=0.5)


def babble(seconds: float, talkers: int = 16, seed: int = 4) -> np.ndarray:
    """A canteen: ``talkers`` espeak voices talking at once (six texts, six voices, several speeds), each looped
    from a random offset, at equal level: speech-shaped and modulated like speech, but no one voice stands out."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    voices = ["en-us", "en-gb", "en-us+f3", "en-gb+m3", "en-us+f2", "en-gb-scotland"]
    out = np.zeros(n, np.float64)
    for i in range(talkers):
        x = phrase(BABBLE_TEXTS[i % len(BABBLE_TEXTS)], voices[i % len(voices)], speed=150 + 10 * i)
        x = np.concatenate((x, np.zeros(int(0.3 * SR), np.float32)))
        x = np.resize(np.roll(x, int(rng.integers(len(x)))), n)
        out += x / rms(x)
    return (out / rms(out)).astype(np.float32)


def music(seconds: float, seed: int = 5) -> np.ndarray:
    """Pop-like music: chords of decaying harmonic notes on the beat, a bass line, a hi-hat; unit RMS."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    out = np.zeros(n, np.float64)
    beat = int(SR * 60 / 110)  # 110 bpm
    chords = [(57, 60, 64), (53, 57, 60), (48, 52, 55), (55, 59, 62)]  # Am F C G, MIDI notes
    note_len = 2 * beat
    t = np.arange(note_len) / SR
    for k, start in enumerate(range(0, n, beat)):
        chord = chords[(k // 4) % len(chords)]
        for m in chord + (chord[0] + 12 * int(rng.integers(0, 2)),):
            f = 440.0 * 2 ** ((m - 69) / 12)
            tone = sum(np.sin(2 * np.pi * f * h * t) / h**1.5 for h in range(1, 7))
            seg = 0.3 * tone * np.exp(-3.0 * t)
            end = min(n, start + note_len)
            out[start:end] += seg[: end - start]
        bass_f = 440.0 * 2 ** ((chord[0] - 24 - 69) / 12)
        bass = 0.6 * np.sin(2 * np.pi * bass_f * t[:beat]) * np.exp(-4.0 * t[:beat])
        end = min(n, start + beat)
        out[start:end] += bass[: end - start]
        for off in (0, beat // 2):  # hi-hat on the beat and the off-beat
            s = start + off
            h = int(0.04 * SR)
            if s + h <= n:
                out[s : s + h] += 0.15 * rng.standard_normal(h) * np.exp(-np.arange(h) / (0.008 * SR))
    return (out / rms(out)).astype(np.float32)


def knocks(seconds: float, peak: float = 0.6, seed: int = 6) -> np.ndarray:
    """Knocks on a door or table: groups of 2–4 thumps 150–250 ms apart (a 120–250 Hz decaying resonance with
    a broadband click), a group every ~4 s."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    x = np.zeros(n, np.float64)
    pos = int(rng.uniform(0.5, 2.0) * SR)
    while pos < n:
        for _ in range(int(rng.integers(2, 5))):
            if pos >= n:  # a group running past the end
                break
            length = int(0.12 * SR)
            t = np.arange(length) / SR
            f = rng.uniform(120, 250)
            thump = np.sin(2 * np.pi * f * t) * np.exp(-t / 0.025)
            thump[: int(0.003 * SR)] += rng.standard_normal(int(0.003 * SR)) * 0.8
            thump *= peak * rng.uniform(0.6, 1.0) / np.max(np.abs(thump))
            end = min(n, pos + length)
            x[pos:end] += thump[: end - pos]
            pos += int(rng.uniform(0.15, 0.25) * SR)
        pos += int(rng.exponential(4.0) * SR)
    return x.astype(np.float32)


def with_noise(scene: Scene, noise: np.ndarray, snr_db: float) -> Scene:
    """The scene with ``noise`` throughout at ``snr_db`` (speech RMS over its active part / noise RMS)."""
    return Scene(mix_at_snr(scene.audio, noise, snr_db), scene.truth)


def distant(scene: Scene, rms_dbfs: float = -48.0, floor_dbfs: float = -70.0) -> Scene:
    """The talker across the room: reverberant (RT60 0.5 s, 5 dB more reverberant than direct), scaled so the
    speech is ``rms_dbfs`` RMS over its active part, over a quiet room noise at ``floor_dbfs``."""
    wet = np.convolve(scene.audio, impulse_response(0.5, -5.0, seed=7))[: len(scene.audio)]
    active = np.abs(scene.audio) > 0.01
    wet *= 10 ** (rms_dbfs / 20) / rms(wet[active])
    room = pink_noise(len(wet) / SR, 10 ** (floor_dbfs / 20), seed=8)
    return Scene((wet + room).astype(np.float32), scene.truth)
