"""Push-to-talk recordings and whole files turned into the audios of one user turn.

A push-to-talk recording bypasses the VAD's triggering: everything between press and release is the turn,
with the silence at both ends trimmed (by energy against the recording's own quiet floor, so a noisy room is
trimmed as well as a quiet one) and cut into audios of at most ``max_chunk_s`` (Qwen2-Audio's encoder takes
30 s at most; a longer recording stays one turn of several audios).
"""

from __future__ import annotations

import numpy as np

from voiceassist.events import SAMPLE_RATE

FRAME = 480  # samples per trimming frame: 30 ms at 16 kHz
KEEP_S = 0.15  # s of audio kept around the speech at each end, so onsets and endings are not clipped
FLOOR_DBFS = -55.0  # frames below this are always silence, dB full scale
ABOVE_FLOOR_DB = 12.0  # a frame is sound when this far above the recording's quietest tenth, dB
CEILING_DBFS = -35.0  # ... but a frame this loud is always sound, dB full scale


def frame_dbfs(audio: np.ndarray) -> np.ndarray:
    """RMS level of each 30 ms frame, dB full scale (the last partial frame included)."""
    n = max(1, -(-len(audio) // FRAME))
    padded = np.zeros(n * FRAME, dtype=np.float64)
    padded[: len(audio)] = audio
    power = np.mean(padded.reshape(n, FRAME) ** 2, axis=1)
    return 10 * np.log10(power + 1e-12)


def sound_bounds(audio: np.ndarray) -> tuple[int, int] | None:
    """(first, end) sample of the sound in ``audio``, at 30 ms frame resolution; None if it is all silence."""
    if len(audio) == 0:
        return None
    levels = frame_dbfs(audio)
    floor = float(np.percentile(levels, 10))
    # Never above CEILING_DBFS: a recording that is speech throughout has a high "floor" and must stay whole.
    threshold = max(FLOOR_DBFS, min(floor + ABOVE_FLOOR_DB, CEILING_DBFS))
    loud = np.flatnonzero(levels > threshold)
    if len(loud) == 0:
        return None
    return int(loud[0]) * FRAME, min(len(audio), (int(loud[-1]) + 1) * FRAME)


def trim_silence(audio: np.ndarray) -> np.ndarray:
    """``audio`` without the silence at its ends (``KEEP_S`` kept around the sound); empty if all silence."""
    bounds = sound_bounds(audio)
    if bounds is None:
        return audio[:0]
    keep = int(KEEP_S * SAMPLE_RATE)
    return audio[max(0, bounds[0] - keep) : min(len(audio), bounds[1] + keep)]


def split_chunks(
    audio: np.ndarray, max_chunk_s: float, max_chunks: int, cut_search_s: float = 2.0
) -> tuple[tuple[np.ndarray, ...], bool]:
    """Cut ``audio`` into consecutive audios of at most ``max_chunk_s``, each cut at the quietest point of its
    last ``cut_search_s`` (the segmenter's rule); keep at most ``max_chunks`` of them.

    Returns (chunks, capped): ``capped`` is True when audio beyond ``max_chunks`` chunks was left out.
    """
    from voiceassist.model.chunking import split_long_audio  # numpy only

    chunks = tuple(split_long_audio(audio, max_chunk_s, cut_search_s)) if len(audio) else ()
    return chunks[:max_chunks], len(chunks) > max_chunks


def level_profile(chunks: tuple[np.ndarray, ...], points: int = 24) -> tuple[float, ...]:
    """A few RMS levels (dBFS, rounded to 0.1) across the audios, for the UI's sparkline."""
    audio = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    if len(audio) == 0:
        return ()
    parts = np.array_split(audio.astype(np.float64), min(points, len(audio)))
    return tuple(round(max(-100.0, 10 * float(np.log10(np.mean(p**2) + 1e-12))), 1) for p in parts)
