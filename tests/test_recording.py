"""The push-to-talk recording (voiceassist/pipeline/recording.py) on real blocks of a synthetic signal: the
indicator's pace, the turn's limit, and the turn a finished recording makes (or why it makes none). The App's
push-to-talk path over a real-time file is in tests/test_app.py."""

from __future__ import annotations

import numpy as np

from voiceassist.config import VadConfig
from voiceassist.events import SAMPLE_RATE as SR
from voiceassist.events import AudioBlock
from voiceassist.pipeline.recording import Recording, recording_turn

BLOCK = SR // 50  # 20 ms


def blocks_of(audio: np.ndarray, t0: float = 100.0) -> list[AudioBlock]:
    return [AudioBlock(audio[i : i + BLOCK], t0 + i / SR) for i in range(0, len(audio), BLOCK)]


def tone(seconds: float) -> np.ndarray:
    return (0.2 * np.sin(np.arange(round(seconds * SR)) * 2 * np.pi * 220 / SR)).astype(np.float32)


def quiet(seconds: float) -> np.ndarray:
    return (0.001 * np.random.default_rng(0).standard_normal(round(seconds * SR))).astype(np.float32)


def test_the_indicator_is_due_every_half_second_and_the_recording_is_full_at_its_limit():
    rec = Recording(limit_s=2.0)
    due, full = [], []
    for k, b in enumerate(blocks_of(tone(3.0))):
        if rec.add(b):
            due.append(k)
        full.append(rec.full)
    assert due == [24, 49, 74, 99, 124, 149], due  # after each 0.5 s of audio (blocks of 20 ms)
    assert full.index(True) == 99 and all(full[99:]), full.index(True)  # from 2.0 s on
    assert abs(rec.held_s - 3.0) < 1e-9 and rec.shown_s == rec.held_s  # what the status shows: the last refresh


def test_a_recording_of_nothing_or_only_silence_makes_no_turn_and_says_why():
    vad = VadConfig()
    assert recording_turn(Recording(60.0), vad) == "nothing recorded"
    rec = Recording(60.0)
    for b in blocks_of(quiet(1.0)):
        rec.add(b)
    assert recording_turn(rec, vad) == "only silence recorded"
    assert rec.end_t is not None and abs(rec.end_t - 101.0) < 1e-6


def test_a_finished_recording_is_trimmed_split_and_dated():
    vad = VadConfig()
    rec = Recording(vad.max_chunk_s * vad.max_chunks_per_turn)
    audio = np.concatenate([quiet(0.8), tone(vad.max_chunk_s + 5.0), quiet(0.6)])
    for b in blocks_of(audio):
        rec.add(b)
    made = recording_turn(rec, vad)
    assert not isinstance(made, str)
    assert len(made.chunks) == 2 and not made.capped and all(len(c) <= vad.max_chunk_s * SR for c in made.chunks)
    # the silence at both ends trimmed (0.15 s kept at each), the speech's end dated where the tone stops
    assert abs(sum(len(c) for c in made.chunks) / SR - (vad.max_chunk_s + 5.0 + 0.3)) < 0.05
    assert abs(made.speech_end_t - (100.0 + 0.8 + vad.max_chunk_s + 5.0)) < 0.05, made.speech_end_t
    assert abs(made.end_t - (100.0 + len(audio) / SR)) < 1e-6
