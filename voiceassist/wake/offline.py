"""The wake word on an audio file: the live chain (FileSource → WakeDetector → Segmenter → WakeGate), fast.

Used by ``voiceassist wake FILE`` (detections only) and ``voiceassist segment FILE --wake-word NAME`` (the
segments that would become turns). Times are seconds on the file's timeline. A file has no replies, so no
follow-up window applies: after each turn the gate waits for the wake word again.
"""

from __future__ import annotations

from typing import Any

from voiceassist.config import VadConfig, WakeConfig
from voiceassist.wake.detector import BUILTIN_WORDS, Detection, WakeDetector, build
from voiceassist.wake.gate import WakeGate, WakeTurn


def detectors_for(wake: WakeConfig) -> list[WakeDetector]:
    """The configured word's detector, or one per built-in word when none is set."""
    words = [wake.word] if wake.word else list(BUILTIN_WORDS)
    return [build(w, wake.engine, wake.threshold, wake.refractory_ms) for w in words]


def _blocks(path: str, block_ms: int):
    """(file start on the capture clock, block iterator) through the microphone's resampler and block size."""
    from voiceassist.audio.sources import EndOfInput, FileSource

    source = FileSource(path, realtime=False, block_ms=block_ms)
    source.start()

    def gen():
        try:
            while True:
                try:
                    block = source.read(timeout=1.0)
                except EndOfInput:
                    return
                if block is not None:
                    yield block
        finally:
            source.close()

    return source, gen()


def detect_file(path: str, wake: WakeConfig, block_ms: int = 20) -> tuple[float, list[Detection]]:
    """(duration in s, detections with ``t`` in s from the file's start, in time order)."""
    detectors = detectors_for(wake)
    source, blocks = _blocks(path, block_ms)
    found: list[Detection] = []
    for block in blocks:
        for det in detectors:
            found += det.process(block)
    found.sort(key=lambda d: d.t)
    return source.duration_s, [Detection(round(d.t - source.start_t, 3), d.word, d.probability) for d in found]


def gated_segments(
    path: str, vad: VadConfig, wake: WakeConfig, block_ms: int = 20
) -> tuple[float, list[dict[str, Any]], list[Detection]]:
    """(duration in s, the segments that become turns, every detection) for one file.

    Each segment is as in ``voiceassist segment --json`` plus ``"wake"`` (the time of the wake word that made it
    a turn, s) and ``"via"`` ("wake": in the same utterance, its audio cut off; "listen": after a pause).
    """
    from voiceassist.vad import Segmenter

    if not wake.word:
        raise ValueError("gated_segments needs a wake word")
    detector = detectors_for(wake)[0]
    gate = WakeGate(wake.listen_s, follow_up_s=0.0, min_turn_s=vad.min_speech_ms / 1000)
    segmenter = Segmenter(vad)
    source, blocks = _blocks(path, block_ms)
    turns: list[WakeTurn] = []
    detections: list[Detection] = []

    def to_gate(events: list) -> None:
        for ev in events:
            for msg in gate.on_segmenter(ev):
                if isinstance(msg, WakeTurn):
                    turns.append(msg)
                    gate.reply_ended(msg.utterance.end_t)  # a file has no reply: wait for the next wake word

    for block in blocks:
        # The live order: the detector sees each block before the segmenter does.
        for d in detector.process(block):
            detections.append(d)
            gate.on_detection(d)
        to_gate(segmenter.feed(block))
        gate.tick(block.t)
    to_gate(segmenter.flush())
    t0 = source.start_t
    segments = []
    for number, turn in enumerate(turns, start=1):
        start = turn.utterance.start_t - t0
        for chunk_s, reason in zip(turn.utterance.durations, turn.utterance.reasons):
            segments.append(
                {
                    "start": round(start, 3),
                    "end": round(start + chunk_s, 3),
                    "duration": round(chunk_s, 3),
                    "turn": number,
                    "reason": reason,
                    "wake": round(turn.wake.t - t0, 3) if turn.wake else None,
                    "via": turn.via,
                }
            )
            start += chunk_s
    return source.duration_s, segments, [Detection(round(d.t - t0, 3), d.word, d.probability) for d in detections]
