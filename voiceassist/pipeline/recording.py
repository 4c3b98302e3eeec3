"""Push-to-talk: the recording while the key is held, and the turn it makes when the key comes up.

The capture stage (pipeline/capture.py) owns one :class:`Recording` at a time, on its own thread: it starts one
when the key goes down, adds every block the front end cleaned while the key is held, and hands the finished
one to :func:`recording_turn`. No VAD cuts a push-to-talk turn: the user said where it starts and ends; only
silence at its ends is trimmed, and a long one is split into chunks as a hands-free turn is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from voiceassist.audio.cutting import sound_bounds, split_chunks, trim_silence
from voiceassist.config import VadConfig
from voiceassist.events import SAMPLE_RATE, AudioBlock

RECORDING_STATUS_EVERY_S = 0.5  # recording indicator refresh, s of recording


@dataclass(frozen=True)
class RecordedTurn:
    """What a finished recording holds: its chunks (each ≤ vad.max_chunk_s), whether it was cut at the turn's
    limit, and capture-clock times (s) of its speech's end and of its last sample."""

    chunks: tuple[np.ndarray, ...]
    capped: bool
    speech_end_t: float
    end_t: float


class Recording:
    """The blocks heard while the key is held. ``limit_s``: the longest turn (vad.max_chunk_s ×
    max_chunks_per_turn), s; the capture stage ends the recording there."""

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self.blocks: list[AudioBlock] = []
        self._samples = 0  # samples recorded (counted as they come: a sum per block would grow with the turn)
        self.shown_s = 0.0  # held_s when the indicator was last refreshed (what the status shows), s

    def add(self, block: AudioBlock) -> bool:
        """Keep ``block``; True when the indicator is due again (every RECORDING_STATUS_EVERY_S of audio)."""
        self.blocks.append(block)
        self._samples += len(block.samples)
        if self.held_s - self.shown_s >= RECORDING_STATUS_EVERY_S:
            self.shown_s = self.held_s
            return True
        return False

    @property
    def held_s(self) -> float:
        """Audio recorded, s."""
        return self._samples / SAMPLE_RATE

    @property
    def full(self) -> bool:
        return self.held_s >= self.limit_s

    @property
    def end_t(self) -> float | None:
        """Capture-clock time of the last sample recorded, s (None: nothing recorded)."""
        if not self.blocks:
            return None
        last = self.blocks[-1]
        return last.t + len(last.samples) / SAMPLE_RATE


def recording_turn(rec: Recording, vad: VadConfig) -> RecordedTurn | str:
    """The turn a finished recording makes, or why it makes none (the status line's words for it)."""
    if not rec.blocks:
        return "nothing recorded"
    audio = np.concatenate([b.samples for b in rec.blocks])
    bounds = sound_bounds(audio)
    if bounds is None:
        return "only silence recorded"
    chunks, capped = split_chunks(trim_silence(audio), vad.max_chunk_s, vad.max_chunks_per_turn, vad.cut_search_s)
    end_t = rec.end_t
    assert end_t is not None
    return RecordedTurn(chunks, capped, rec.blocks[0].t + bounds[1] / SAMPLE_RATE, end_t)
