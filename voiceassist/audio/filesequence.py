"""Several audio files played one after another as one source (``voiceassist --from-file A --from-file B``).

The capture clock runs on across files: each next file starts where the previous one ended (or now, if that
is later), so a fast (not real-time) run keeps one monotonic clock, as a microphone would.
"""

from __future__ import annotations

from voiceassist.audio.sources import CaptureStats, EndOfInput, FileSource
from voiceassist.events import SAMPLE_RATE, AudioBlock, now


class FileSequence:
    """An :class:`~voiceassist.audio.sources.AudioSource` over ``paths`` in order."""

    def __init__(self, paths: list[str], realtime: bool = True, block_ms: int = 20) -> None:
        if not paths:
            raise ValueError("FileSequence needs at least one file")
        self.files = [FileSource(p, realtime=realtime, block_ms=block_ms) for p in paths]
        self.realtime = realtime
        self.is_device = False
        self.stats = CaptureStats()
        self._index = 0
        self._end_t = 0.0  # capture clock just after the last block handed out, s

    @property
    def name(self) -> str:
        return self.files[min(self._index, len(self.files) - 1)].name

    def start(self) -> None:
        # Open every file now, so that a missing or corrupt one is reported before anything runs; the
        # later ones are re-anchored on the clock when their turn comes.
        for f in self.files:
            f.start()
        self._end_t = self.files[0].start_t

    def read(self, timeout: float) -> AudioBlock | None:
        while True:
            current = self.files[self._index]
            try:
                block = current.read(timeout)
            except EndOfInput:
                if self._index + 1 >= len(self.files):
                    raise
                self._index += 1
                self.files[self._index].start_t = max(now(), self._end_t)
                continue
            if block is not None:
                self.stats.blocks += 1
                self._end_t = block.t + len(block.samples) / SAMPLE_RATE
            return block

    def close(self) -> None:
        for f in self.files:
            f.close()
