"""The wake word's own echo-cancelled microphone: the echo's linear estimate removed, nothing suppressed.

Why (measured, ``scripts/bench_wake_echo.py``): WebRTC AEC3's output (``audio.echo.EchoCanceller``) is made
for the VAD and the model. After its linear filter, its suppressor takes down every band and frame where it
expects residual echo, and while the assistant speaks that includes the user's voice over it: by 30-40 dB in
the first seconds of playback (before AEC3 has learned the echo path, or that there is none: a headset), and by
a few dB on average, in deep per-band notches, during double talk in a loud room. A wake word said over the
reply then reaches the detector in pieces, and is missed (okay_nabu over a spoken reply in the test room: 5 of
9 heard through AEC3 + noise suppression). The detector's input level is not the problem (AEC3's high-pass
filter and linear stage pass the near end at unit gain) and neither is the half-duplex gate (the detector is a
front-end processor: it hears every block, whatever the echo policy does with the utterances).

A linear canceller alone leaves more echo (≈16 dB ERLE in the test room, against AEC3's ≥ 40 dB) but passes
the user's voice untouched, so the wake listener hears both (:class:`LinearWakeTap` before AEC3 in the chain,
its own detector on the linear output) and fires on either. The assistant's own voice saying the wake word
through the linear branch was measured too (it stays far below the cutoff; a test checks it).

The linear canceller is SpeexDSP's MDF (``libspeexdsp``: the library PulseAudio links, Debian's
``libspeexdsp1``) through ctypes. Its echo canceller is the adaptive filter alone (Speex's residual-echo
suppressor lives in its preprocessor, which we do not use); pywebrtc-audio does not expose AEC3's linear
output, and the PyPI bindings of SpeexDSP are source builds that need a compiler. No library: no linear
branch, and the wake word is heard through AEC3 only (:func:`available` says so; the App shows a notice).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import TYPE_CHECKING, Any

import numpy as np

from voiceassist.audio.echo import ErleMeter
from voiceassist.audio.framing import FrameCarry
from voiceassist.events import SAMPLE_RATE, AudioBlock

if TYPE_CHECKING:
    from voiceassist.audio.echo import EchoCanceller
    from voiceassist.wake.live import WakeListener

FRAME = SAMPLE_RATE // 100  # 160 samples: 10 ms frames, as the AEC3 side uses
FILTER_MS = 300  # adaptive filter length, ms: the echo's delay behind the reference plus the room's tail
# (measured: 150 ms left 10 dB of echo in the test room, 300 ms 16 dB, 500 ms no better and slower to converge)
_SET_SAMPLING_RATE = 24  # SPEEX_ECHO_SET_SAMPLING_RATE (speex/speex_echo.h)
_lib: Any = None
_tried = False


def _load() -> Any:
    """libspeexdsp with the four functions typed, or None when it is not installed."""
    global _lib, _tried
    if _tried:
        return _lib
    _tried = True
    for name in (ctypes.util.find_library("speexdsp"), "libspeexdsp.so.1", "libspeexdsp.dylib"):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        lib.speex_echo_state_init.restype = ctypes.c_void_p
        lib.speex_echo_state_init.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.speex_echo_cancellation.restype = None
        lib.speex_echo_cancellation.argtypes = [ctypes.c_void_p] * 4
        lib.speex_echo_ctl.restype = ctypes.c_int
        lib.speex_echo_ctl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
        lib.speex_echo_state_reset.restype = None
        lib.speex_echo_state_reset.argtypes = [ctypes.c_void_p]
        lib.speex_echo_state_destroy.restype = None
        lib.speex_echo_state_destroy.argtypes = [ctypes.c_void_p]
        _lib = lib
        break
    return _lib


def available() -> bool:
    """libspeexdsp can be loaded (the linear wake branch can run)."""
    return _load() is not None


class LinearEchoCanceller:
    """SpeexDSP's MDF adaptive filter on whole 10 ms frames: (microphone, reference) → microphone less the
    echo's linear estimate. Same length out as in, no delay, unit gain on what is not echo (measured)."""

    def __init__(self, filter_ms: int = FILTER_MS) -> None:
        lib = _load()
        if lib is None:
            raise RuntimeError("libspeexdsp is not installed (Debian: apt-get install libspeexdsp1)")
        self._lib = lib
        self._state = lib.speex_echo_state_init(FRAME, filter_ms * SAMPLE_RATE // 1000)
        if not self._state:
            raise RuntimeError("libspeexdsp could not create an echo canceller")
        rate = ctypes.c_int(SAMPLE_RATE)
        lib.speex_echo_ctl(self._state, _SET_SAMPLING_RATE, ctypes.byref(rate))

    def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        """``near`` and ``far``: float32, the same length, a multiple of FRAME."""
        n = len(near) // FRAME * FRAME
        mic = np.ascontiguousarray(np.clip(near[:n], -1.0, 1.0) * 32767.0, dtype=np.int16)
        ref = np.ascontiguousarray(np.clip(far[:n], -1.0, 1.0) * 32767.0, dtype=np.int16)
        out = np.empty(n, np.int16)
        for i in range(0, n, FRAME):
            self._lib.speex_echo_cancellation(
                self._state, mic[i:].ctypes.data, ref[i:].ctypes.data, out[i:].ctypes.data
            )
        return out.astype(np.float32) / 32767.0

    def reset(self) -> None:
        self._lib.speex_echo_state_reset(self._state)

    def __del__(self) -> None:
        state, self._state = getattr(self, "_state", None), None
        if state:
            self._lib.speex_echo_state_destroy(state)


class LinearWakeTap:
    """A front-end processor placed *before* the echo canceller: each microphone block goes on unchanged; a copy,
    less the linear echo estimate, goes to the listener's second detector (:meth:`WakeListener.hear_linear`).

    Alignment. The filter covers echoes from 0 to FILTER_MS behind the reference it is handed, so the reference
    must lead the echo by a little (LEAD_S). The canceller's delay measurement (GCC-PHAT, once a second while the
    far end plays: ``EchoCanceller.state().delay_ms``, the echo behind the sound leaving the speaker) says where:
    the reference heard at ``t + LEAD_S - delay`` goes with the microphone block at ``t``. Until there is one,
    the canceller's own alignment (``reference_lead_s``). Measured on the test's PulseAudio room, the delay is
    150-900 ms and moves when the player reopens its stream, beyond what AEC3 (250 ms) and this filter cover
    unaligned; the canceller itself re-aligns only after 3 agreeing measurements, this branch after one (a
    wrong move costs this branch alone a second, and the AEC3 branch still hears).

    The first measurement is not a move: the filter has been learning the path as it is since playback began,
    and restarting it costs seconds of convergence (the restart when the first measurement came, 1-2 s into the
    first reply, was part of why a wake word 3 s into that reply went unheard: live, 3 of 8 stopped with it and
    5 of 8 without, BENCHMARKS.md "The first seconds of the very first reply"). So the filter restarts only
    when the echo lies outside the part of the filter that can model it (``WINDOW_S``: it would stay
    uncancelled), or when the measured delay moves by more than MOVE_S (a new path: the taps are wrong)."""

    LEAD_S = 0.04  # the reference leads its echo by this much after a re-alignment, s (slack for jitter)
    MOVE_S = 0.03  # re-align when the measured delay moves by more than this, s (the filter absorbs less)
    # Where in the filter the echo may start without a re-alignment, s behind the reference as handed: ahead of
    # 10 ms (less is the measurement's jitter from acausal, which no filter cancels) and behind 150 ms (the
    # room's tail must fit in the rest of the 300 ms filter).
    WINDOW_S = (0.01, 0.15)
    CHECK_S = 0.5  # s of audio between looks at the canceller's delay measurement

    def __init__(self, canceller: EchoCanceller, listener: WakeListener) -> None:
        assert canceller.reference is not None
        self.canceller = canceller
        self.listener = listener
        self._linear = LinearEchoCanceller()
        self._frames = FrameCarry(FRAME)  # < FRAME samples waiting for a whole frame
        self._lead: float | None = None  # the reference is read at t + this, s (None: not yet decided)
        self._since_check = float("inf")  # s of audio since the last look at the delay measurement
        self._delay: float | None = None  # the measured delay the filter was last placed for, s
        self.realigned = 0  # times the filter was re-aligned (restarted) because the echo's delay moved
        # How much echo the filter takes off (its ERLE, dB: None until the far end has played since the last
        # restart): smoothed per-sample powers of its input and output over 10 ms frames where the far end plays,
        # as the echo canceller measures its own. A wake word over the reply is heard through this branch once
        # it is ~10 dB or more (tests/test_wake_room.py; ~8 dB 3 s into the first sound, 13-15 dB from 5 s).
        self._erle = ErleMeter()

    def state(self) -> dict[str, Any]:
        """For ``status --json`` and the kiosk's health (under ``echo.wake_linear``)."""
        erle = self._erle.db
        return {"erle_db": None if erle is None else round(erle, 1), "realigned": self.realigned}

    def _check(self) -> None:
        """Place the filter on the reference (first call), or move it when the echo left its window or moved."""
        delay_ms = self.canceller.state().delay_ms
        if self._lead is None:
            self._lead = self.canceller.reference_lead_s
        if delay_ms is None:
            return
        delay = delay_ms / 1000
        at = self._lead + delay  # where the echo starts in the filter, s behind the reference as handed
        moved = self._delay is not None and abs(delay - self._delay) > self.MOVE_S
        if self._delay is None or moved:
            self._delay = delay
        if moved or not self.WINDOW_S[0] <= at <= self.WINDOW_S[1]:
            # The taps are for the old alignment; a fresh filter learns the new one sooner than they unlearn it.
            self._lead = self.LEAD_S - delay
            self._linear.reset()
            self._erle.reset()
            self.realigned += 1

    def process(self, block: AudioBlock) -> AudioBlock:
        data, t = self._frames.whole(block)
        n = len(data)
        if n:
            reference = self.canceller.reference
            assert reference is not None
            self._since_check += n / SAMPLE_RATE
            if self._since_check >= self.CHECK_S:
                self._since_check = 0.0
                self._check()
            assert self._lead is not None
            far = reference.read(t + self._lead, n)
            out = self._linear.process(data, far)
            self._erle.measure(data, far, out)
            self.listener.hear_linear(AudioBlock(out, t))
        return block

    def reset(self) -> None:
        self._linear.reset()
        self._frames.clear()
        self._erle.reset()
        self._lead, self._delay, self._since_check = None, None, float("inf")
