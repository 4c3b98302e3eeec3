"""Acoustic echo cancellation with the exact far end: what the player really wrote, aligned by the audio clocks.

Two objects, one per side of the sound card:

- :class:`~voiceassist.audio.farend.FarEndReference` (``audio/farend.py``) — written by the speech player's
  output callback (a copy of each block and the capture-clock time its first sample is heard, from PortAudio's
  ``outputBufferDacTime``; nothing else happens on that thread), read by the capture thread as 16 kHz mono for
  any stretch of the capture clock.
- :class:`EchoCanceller` — a front-end processor on the capture thread: for each microphone block (stamped
  with its ADC time, see ``audio.sources``) it takes the far end heard over the same stretch and runs WebRTC's
  audio processing (AEC3, then optionally noise suppression and AGC2, from pywebrtc-audio) in 10 ms frames.

Alignment. The microphone block at capture time ``t`` holds the echo of what was heard at ``t`` (plus the few
ms of the acoustic path). AEC3 cannot cancel an echo that reaches the microphone before its reference does
(measured on a simulated room: 4 dB ERLE with the reference exactly aligned, ≥ 45 dB with it 5–250 ms ahead), so
the reference handed with the block at ``t`` is the one heard at ``t + LEAD_MS`` and AEC3's own delay estimator
finds the remaining few ms. When a device reports no DAC/ADC times the stamps fall back to the write time plus
PortAudio's latency figure (the player) or one block (the microphone): the echo then lags the reference by up to
the real latency, which AEC3's estimator covers (measured: 500 ms of lead cancelled, 600 ms not);
:attr:`EchoCanceller.notice` says so once. A GCC-PHAT cross-correlation over the last 2 s (``audio/delay.py``)
measures the delay that remains, for ``status``, and re-aligns the reference only when it falls outside what
AEC3 covers: moving the reference under a working canceller makes AEC3 re-learn the path,
and the echo leaks through for seconds meanwhile (measured in the room: out ≈ in for 3.5 s after a move from
300 to 20 ms of lead, which barged in by itself). A move of either stamp timeline discards the measurement
window (measured across it, the delay is the old placement's), and a re-alignment that comes to read past what
the player has written (the stamp error it compensated was corrected at its source) is pulled back.

Nothing is dropped: every input sample comes out, while the canceller starts (its first block is processed,
not skipped) and across :meth:`EchoCanceller.reset`. WebRTC delays its output by :attr:`EchoCanceller.latency`
samples (8 ms AEC3, 6 ms noise suppression) and the 10 ms framing holds back < 10 ms more: output blocks are
stamped with the capture time their first sample was heard (so ``t`` stays the ADC clock), and ``flush``
returns what is held back.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from voiceassist.audio.delay import XCORR_EVERY_S, DelayEstimator
from voiceassist.audio.farend import ReferenceSource
from voiceassist.audio.framing import FrameCarry
from voiceassist.errors import ConfigError
from voiceassist.events import SAMPLE_RATE, AudioBlock

RATE = SAMPLE_RATE  # Hz: everything here runs at the capture chain's rate
FRAME = RATE // 100  # 160 samples: WebRTC's audio processing works in 10 ms frames
LEAD_MS = 20  # the reference is handed this far ahead of its echo (AEC3 needs it ahead; see the docstring)
FAR_ACTIVE_DBFS = -50.0  # a far-end frame louder than this counts as playing
FAR_ACTIVE_ENERGY = FRAME * 10 ** (FAR_ACTIVE_DBFS / 10)  # the same, as a 10 ms frame's sum of squares
ECHO_HOLD_S = 0.5  # s after the far end last played that its echo (the room's reverberation) may still be heard
# AEC3's range, measured offline on the test room (RT60 0.6 s): ≥ 41 dB ERLE with the reference 20–500 ms ahead,
# < 1 dB at 600 ms. Outside it (with a margin) the reference is re-aligned to LEAD_MS.
AEC_MIN_DELAY_MS, AEC_MAX_DELAY_MS = 2.0, 450.0
REALIGN_AFTER = 2  # consecutive out-of-range measurements (1 s apart) before the reference moves
REALIGN_AGREE_MS = 5.0  # ... that agree within this
REALIGN_LEAD_MS = 80.0  # a re-aligned reference leads its echo by this (room for the path to grow or shrink)
# A move of either stamp timeline by this much (the far end's re-anchors, refinements, jumps; the microphone's
# stamps against its sample count) discards the delay estimator's window and its pending evidence: measured across
# the move, it is the old placement's delay, and re-aligning on it corrects the same error twice.
PLACEMENT_MOVE_S = 0.001
# A re-aligned reference read past what the player has written (while it writes on) gets silence: nothing to
# cancel, nothing to measure a delay on, so nothing would ever move it back. It happens when a stamp error the
# re-alignment compensated is corrected at its source after all. After STARVED_S of it the re-alignment is
# pulled back to end STARVED_MARGIN_S inside what was written.
STARVED_S = 0.5  # s of microphone audio
STARVED_TOLERANCE_S = 0.005  # s past the written end that still counts as fed (the player's block jitter)
STARVED_MARGIN_S = 0.02  # s
# ERLE: 10·log10(power in / power out) over frames while the far end plays, the two powers smoothed over ~0.3 s
# of them (smoothing the ratio in dB instead lets a few fully suppressed frames hide echo leaking through).
ERLE_SMOOTHING = 0.03  # per 10 ms frame
CONVERGED_ERLE_DB = 18.0  # the echo is this far down: "converged"
CONVERGED_FRAMES = 100  # ... for this many 10 ms frames of far end running (1 s)
# Once converged, ERLE falls in double talk (the user's speech is in the output, as it should be) without the
# canceller being any worse; so "converged" holds until ERLE stays under CONVERGED_ERLE_DB for DIVERGED_FRAMES of
# far end (longer than double talk and its trace in the smoothed powers: a barge-in stops the far end within
# barge_in_ms + ~0.3 s, a 0.45 s backchannel keeps ERLE down for ~1.7 s of far end), or the echo path moves
# (two measurements of the delay agreeing on a new one), or a reset / re-alignment.
DIVERGED_FRAMES = 250  # 2.5 s of far end
PATH_MOVED_MS = 8.0  # a measured delay this far from the last one: the echo path moved
# WebRTC's own processing delay, samples at 16 kHz (measured by cross-correlating input and output; a test
# checks them): AEC3 holds back 8 ms, noise suppression 6 ms (their analysis windows overlap the next frame).
AEC_LATENCY = 128
NS_LATENCY = 96
EPS = 1e-10
INSTALL_HINT = "pip install 'voiceassist[aec]'"


class ErleMeter:
    """A canceller's echo return loss enhancement, dB: the smoothed per-sample powers of its input and output
    over the 10 ms frames where the far end plays (``db`` None until it has). The echo canceller's and the wake
    word's linear branch's (wake/linear.py) figure alike."""

    def __init__(self) -> None:
        self.db: float | None = None
        self._e_in = self._e_out = 0.0

    def reset(self) -> None:
        self.db, self._e_in, self._e_out = None, 0.0, 0.0

    def measure(self, near: np.ndarray, far: np.ndarray, out: np.ndarray) -> np.ndarray:
        """One chunk of whole frames (the canceller's input, its reference, its output; the same length): the
        figure updated; the mask of the frames where the far end plays."""
        frames = len(near) // FRAME
        f2 = far.reshape(frames, FRAME)
        active = np.einsum("ij,ij->i", f2, f2) > FAR_ACTIVE_ENERGY  # per 10 ms frame (einsum: no temporaries)
        n_act = int(np.count_nonzero(active))
        if not n_act:
            return active
        if n_act == frames:  # the far end plays throughout (the usual case): no selection, no copies
            e_in, e_out = np.einsum("i,i->", near, near), np.einsum("i,i->", out, out)
        else:
            n2, o2 = near.reshape(frames, FRAME)[active], out.reshape(frames, FRAME)[active]
            e_in, e_out = np.einsum("ij,ij->", n2, n2), np.einsum("ij,ij->", o2, o2)
        p_in, p_out = float(e_in) / (n_act * FRAME), float(e_out) / (n_act * FRAME)
        if self.db is None:
            self._e_in, self._e_out = p_in, p_out
        else:
            a = 1 - (1 - ERLE_SMOOTHING) ** n_act
            self._e_in += a * (p_in - self._e_in)
            self._e_out += a * (p_out - self._e_out)
        self.db = 10 * math.log10((self._e_in + EPS) / (self._e_out + EPS))
        return active


class Convergence(enum.Enum):
    IDLE = "idle"  # nothing played yet: nothing to cancel
    CONVERGING = "converging"  # playing, the echo is not yet CONVERGED_ERLE_DB down
    CONVERGED = "converged"  # the echo is at least CONVERGED_ERLE_DB down


@dataclass(frozen=True)
class EchoState:
    """What ``voiceassist status --json`` and the kiosk's health show of the canceller."""

    enabled: bool  # echo cancellation is running (False: only noise suppression / gain, or nothing)
    convergence: str  # a Convergence value
    erle_db: float | None  # echo return loss enhancement while the far end plays, dB (None before any)
    delay_ms: float | None  # measured delay of the echo behind the sound leaving the speaker, ms
    timing: str  # "device" (DAC/ADC times) or "estimated" (a device gave none: the canceller finds the delay)
    realigned: int  # times the reference was re-aligned because the delay left AEC3's range
    resets: int
    # Moves of the far end's timeline inside its runs (refinement, jumps, drift steps; audio/timeline.py) and of
    # the microphone's block stamps against their sample count: each makes AEC3 re-adapt (on one clock: one
    # refinement each, nothing after).
    reference_moves: int = 0
    mic_moves: int = 0
    # drift checks where the far end's DAC stamps asked for a slow move the echo's measured lag did not show
    reference_held: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "convergence": self.convergence,
            "erle_db": None if self.erle_db is None else round(self.erle_db, 1),
            "delay_ms": None if self.delay_ms is None else round(self.delay_ms, 1),
            "timing": self.timing,
            "realigned": self.realigned,
            "resets": self.resets,
            "reference_moves": self.reference_moves,
            "mic_moves": self.mic_moves,
            "reference_held": self.reference_held,
        }


def _load_webrtc() -> Any:
    try:
        import pywebrtc_audio
    except ImportError:
        raise ConfigError(
            f"echo cancellation / noise suppression needs pywebrtc-audio, which is not installed: {INSTALL_HINT}"
        ) from None
    return pywebrtc_audio


def available() -> bool:
    """pywebrtc-audio can be imported (``echo_cancel = "auto"`` quietly does without it)."""
    try:
        _load_webrtc()
    except ConfigError:
        return False
    return True


class EchoCanceller:
    """A capture-chain processor: ``process(block) → block`` (16 kHz mono), same samples less echo and noise.

    ``reference`` None runs without a far end (noise suppression / gain only). ``mic_timed`` is a callable that
    says whether the microphone's block stamps come from the ADC clock (see MicrophoneSource.timing_reported);
    ``mic_echo`` one that takes each measurement of the echo's lag, s (MicrophoneSource.observe_echo).
    """

    def __init__(
        self,
        reference: ReferenceSource | None,
        *,
        noise_suppression: bool = False,
        auto_gain: bool = False,
        ns_level: int = 1,
        lead_ms: float = LEAD_MS,
        mic_timed: Any = None,
        mic_echo: Callable[[float], None] | None = None,
    ) -> None:
        webrtc = _load_webrtc()
        self.reference = reference
        self.lead_s = lead_ms / 1000
        self._mic_timed = mic_timed
        self._mic_echo = mic_echo
        self._make = lambda: webrtc.AudioProcessor(
            sample_rate=RATE,
            echo_cancellation=reference is not None,
            noise_suppression=noise_suppression,
            auto_gain_control=auto_gain,
            high_pass_filter=True,
            ns_level=ns_level,
        )
        self._apm = self._make()
        # Samples WebRTC holds back: output sample j was captured at input sample j − latency.
        self.latency = (AEC_LATENCY if reference is not None else 0) + (NS_LATENCY if noise_suppression else 0)
        self._frames = FrameCarry(FRAME, RATE)  # < FRAME samples waiting for a whole frame
        self._offset_s = 0.0  # extra shift of the reference after a re-alignment, s
        self._estimator = DelayEstimator()
        self._erle = ErleMeter()
        self._converged_frames = 0  # far-end frames running at ≥ CONVERGED_ERLE_DB
        self._diverged_frames = 0  # far-end frames running under DIVERGED_ERLE_DB
        self._converged = False
        self._realigned = 0
        self._resets = 0
        self._out_of_range = 0  # consecutive delay measurements outside AEC3's range
        self._settled_ms: float | None = None  # the delay the canceller works at (measured), ms
        self._moved: float | None = None  # a new delay seen once (a second agreeing one confirms the move), ms
        self._path_moves = 0
        self._ref_moves = -1  # the reference's reanchors when last looked at (-1: not yet)
        self._played = False  # the far end has played since the start (or the last reset)
        self._last_out = 0.0  # the last of them, ms
        self._notices: list[str] = []
        self._told_untimed = False
        self._since_far = math.inf  # s of capture since the far end last played
        self._next_t: float | None = None  # where the next input block starts if its stamps run on, s
        self._mic_moves = 0  # input blocks whose stamp was off that by half a sample or more
        self._ref_steps = -1  # the reference's placement moves (FarEndReference.steps) when last looked at
        self._horizon = -math.inf  # the reference's written end at the last read, s
        self._starved_s = 0.0  # s of microphone audio running whose reference was read past the written end
        self._told_starved = False

    # ---- state -----------------------------------------------------------------------------------------------
    def _timed(self) -> bool:
        mic = True if self._mic_timed is None else bool(self._mic_timed())
        return mic and (self.reference is None or self.reference.timed)

    def state(self) -> EchoState:
        erle = self._erle.db
        if self.reference is None or (erle is None and not self._played):
            conv = Convergence.IDLE
        else:
            conv = Convergence.CONVERGED if self._converged else Convergence.CONVERGING
        delay = self._estimator.delay_ms
        if delay is not None:
            delay = self._unshifted_ms(delay)
        return EchoState(
            enabled=self.reference is not None,
            convergence=conv.value,
            erle_db=erle,
            delay_ms=delay,
            timing="device" if self._timed() else "estimated",
            realigned=self._realigned,
            resets=self._resets,
            reference_moves=int(getattr(self.reference, "moves", 0)),
            mic_moves=self._mic_moves,
            reference_held=int(getattr(self.reference, "held", 0)),
        )

    def _unshifted_ms(self, delay_ms: float) -> float:
        """A measured lag (behind the reference as handed, ms) with our own shift undone (the lead and any
        re-alignment): the echo's lag behind the reference as its timeline placed it, ms."""
        return delay_ms - (self.lead_s + self._offset_s) * 1000

    @property
    def reference_lead_s(self) -> float:
        """How far ahead of a microphone block's capture time its far end is read (the lead plus any
        re-alignment), s: a second canceller on the same reference (the wake word's, ``wake.linear``) reads there."""
        return self.lead_s + self._offset_s

    @property
    def echo_active(self) -> bool:
        """The far end played within the last ECHO_HOLD_S: what comes out is the canceller's residual (the VAD
        judges it differently, see ``Segmenter.set_echo_active``)."""
        return self._since_far <= ECHO_HOLD_S

    def notices(self) -> list[str]:
        """One-line notices not yet shown (each said once), e.g. a device that reports no latency."""
        out, self._notices = self._notices, []
        return out

    def reset(self) -> None:
        """Forget the learned echo path and noise (a new room, a moved device); no audio is dropped."""
        self._apm = self._make()  # AudioProcessor.reset keeps AEC3's delay state; a fresh one forgets all
        self._forget_convergence()
        self._out_of_range = 0
        self._played = False
        self._resets += 1

    def _forget_convergence(self) -> None:
        self._erle.reset()
        self._converged, self._converged_frames, self._diverged_frames = False, 0, 0

    # ---- processing ------------------------------------------------------------------------------------------
    def process(self, block: AudioBlock) -> AudioBlock:
        """Whole 10 ms frames of (carry + block) through the canceller; the rest waits for the next block.
        The returned block's ``t`` is the capture time of its first sample."""
        moved = 0.0 if self._next_t is None else abs(block.t - self._next_t)  # s
        if moved * RATE >= 0.5:
            self._mic_moves += 1
            if moved >= PLACEMENT_MOVE_S:
                self._placement_moved()
        self._next_t = block.t + len(block.samples) / RATE
        data, t = self._frames.whole(block)
        out_t = t - self.latency / RATE  # what comes out now was captured `latency` samples earlier
        if len(data) == 0:
            return AudioBlock(np.zeros(0, np.float32), out_t)
        return AudioBlock(self._run(data, t), out_t)

    def flush(self) -> AudioBlock:
        """End of input: the held-back partial frame and WebRTC's own delay, pushed out with silence."""
        k, t = len(self._frames.samples), self._frames.t
        want = k + self.latency
        if not want:
            return AudioBlock(np.zeros(0, np.float32), t)
        padded = np.concatenate((self._frames.samples, np.zeros(-(-want // FRAME) * FRAME - k, np.float32)))
        self._frames.clear()
        return AudioBlock(self._run(padded, t)[:want], t - self.latency / RATE)

    def _run(self, near: np.ndarray, t: float) -> np.ndarray:
        if self.reference is None:
            return self._apm.process(near)
        if not self._told_untimed and not self._timed():
            self._told_untimed = True
            self._notices.append(
                "echo cancellation: an audio device reports no latency; the canceller estimates the echo delay "
                "itself (it may take a few seconds longer to converge)"
            )
        far = self.reference.read(t + self.reference_lead_s, len(near))
        self._check_fed(t + self.reference_lead_s + len(near) / RATE, len(near) / RATE)
        out = self._apm.process(near, far)
        frames = len(near) // FRAME
        active = self._erle.measure(near, far, out)
        n_act = int(np.count_nonzero(active))
        if n_act:
            self._played = True
            self._count_convergence(n_act)
            self._since_far = int(active[::-1].argmax()) * FRAME / RATE  # frames after the last active one
        else:
            self._since_far += frames * FRAME / RATE
        self._follow_reference()
        # Measure the delay twice as often until converged: a path beyond AEC3's range is re-aligned sooner.
        every = XCORR_EVERY_S if self._converged else XCORR_EVERY_S / 2
        delay = self._estimator.push(near, far, n_act, every)
        if delay is not None:
            # The live far end's timeline takes a slow move only when the echo shows it (audio/timeline.py):
            # the lag behind the reference as its timeline placed it, our own shift undone. (A file's reference
            # has no timeline to move: no such method.) The microphone's timeline too: one 8-min room run
            # without this followed the microphone's stamp walk with 370 drift steps against a steady echo.
            lag_s = self._unshifted_ms(delay) / 1000
            observe = getattr(self.reference, "observe_echo", None)
            if observe is not None:
                observe(lag_s)
            if self._mic_echo is not None:
                self._mic_echo(lag_s)
            self._check_alignment(delay)
        return out

    def _follow_reference(self) -> None:
        """After a read (which takes in what the player wrote), the far end's placement moves since the last one.
        A new run (a stream reopened, or a jump of more than REANCHOR_S): the echo path AEC3 learned may have moved
        with it (measured: ERLE 60 → 5 dB after one), so not converged until it shows it is; the small steps of
        output underruns keep the path and leave convergence be. Any move (re-anchor, refinement, jump) discards
        the delay measurement's window."""
        reanchors = getattr(self.reference, "reanchors", 0)
        steps = getattr(self.reference, "steps", 0)
        if self._ref_moves >= 0 and reanchors != self._ref_moves and reanchors > 1:
            self._forget_convergence()
        if self._ref_steps >= 0 and steps != self._ref_steps:
            self._placement_moved()
        self._ref_moves, self._ref_steps = reanchors, steps

    def _placement_moved(self) -> None:
        """The far end or the microphone was just placed anew on the capture clock (PLACEMENT_MOVE_S)."""
        self._estimator.discard()
        self._out_of_range, self._moved = 0, None

    def _check_fed(self, read_end: float, seconds: float) -> None:
        """After a read up to ``read_end`` (capture clock, s): pull a re-alignment back that reads past what the
        player has written while it writes on (STARVED_S). Before any re-alignment the reference is read at most
        LEAD_MS ahead of the microphone, which the output and input latencies always cover."""
        horizon = getattr(self.reference, "horizon", math.inf)
        writing, self._horizon = horizon > self._horizon, horizon
        if self._offset_s <= 0 or read_end <= horizon + STARVED_TOLERANCE_S:
            self._starved_s = 0.0
            return
        if not writing:  # the player's stream is closed or between callbacks: nothing to judge by
            return
        self._starved_s += seconds
        if self._starved_s < STARVED_S:
            return
        self._starved_s = 0.0
        self._offset_s = max(0.0, self._offset_s - (read_end - horizon) - STARVED_MARGIN_S)
        self._realigned += 1
        self._restart_after_move()
        if not self._told_starved:
            self._told_starved = True
            self._notices.append(
                "echo cancellation: the re-aligned reference ran ahead of what the speaker played (a device's "
                "timing corrected itself); the re-alignment was pulled back"
            )

    def _restart_after_move(self) -> None:
        """The reference was moved under AEC3: a fresh one learns the new path in ~0.5 s; the old one took 3.5 s
        to find it again, passing the echo through meanwhile (measured in the room). Not converged until it has."""
        self._apm = self._make()
        self._forget_convergence()
        self._estimator = DelayEstimator()
        self._settled_ms = self._moved = None
        self._out_of_range = 0

    def _count_convergence(self, n_act: int) -> None:
        """Convergence from the ERLE just measured over ``n_act`` more far-end frames."""
        erle = self._erle.db
        if erle is not None and erle >= CONVERGED_ERLE_DB:
            self._converged_frames += n_act
            self._diverged_frames = 0
            if self._converged_frames >= CONVERGED_FRAMES:
                self._converged = True
        else:
            self._converged_frames = 0
            self._diverged_frames += n_act
            if self._diverged_frames >= DIVERGED_FRAMES:
                self._converged = False

    def _check_alignment(self, delay_ms: float) -> None:
        """Re-align the reference when the echo's delay behind it leaves AEC3's range in REALIGN_AFTER
        measurements running that agree within REALIGN_AGREE_MS (one noisy measurement must not move it).

        Only while the echo is not well cancelled (ERLE under CONVERGED_ERLE_DB): a cancelling AEC3 proves the
        reference is where it needs to be, and espeak's regular rhythm gives GCC-PHAT false peaks that agree
        with each other often enough (measured in the room: re-alignments to 1.5 and 2 s under a 45 dB ERLE)."""
        if self._erle.db is not None and self._erle.db >= CONVERGED_ERLE_DB:
            self._out_of_range, self._moved = 0, None
            if AEC_MIN_DELAY_MS <= delay_ms <= AEC_MAX_DELAY_MS:
                self._settled_ms = delay_ms
            return
        if AEC_MIN_DELAY_MS <= delay_ms <= AEC_MAX_DELAY_MS:
            self._out_of_range = 0
            # AEC3 follows a path that moves inside its range, but its filter is wrong until it has: not
            # converged meanwhile (the policy is half duplex), though the reference stays where it is.
            settled = self._settled_ms
            if settled is None or abs(delay_ms - settled) <= PATH_MOVED_MS:
                self._settled_ms = settled if settled is not None else delay_ms
                self._moved = None
            elif self._moved is not None and abs(delay_ms - self._moved) <= REALIGN_AGREE_MS:
                self._settled_ms, self._moved = delay_ms, None
                self._forget_convergence()
                self._path_moves += 1
            else:
                self._moved = delay_ms
            return
        if self._out_of_range and abs(delay_ms - self._last_out) > REALIGN_AGREE_MS:
            self._out_of_range = 0
        self._out_of_range += 1
        self._last_out = delay_ms
        if self._out_of_range < REALIGN_AFTER:
            return
        # Shift the reference so that it leads the echo by REALIGN_LEAD_MS: a delay d behind means reading d later.
        self._offset_s += (REALIGN_LEAD_MS - delay_ms) / 1000
        self._realigned += 1
        self._restart_after_move()
        if self._realigned == 1:
            self._notices.append(
                f"echo cancellation: the echo arrived {delay_ms:.0f} ms after the reference (outside what the "
                "canceller tracks); the reference was re-aligned"
            )


def ns_wanted(setting: str, echo_cancelling: bool) -> bool:
    """``[audio] noise_suppression``: auto = on exactly when echo is cancelled (measured, scripts/bench_vad.py
    and the segment tests: it clears AEC3's residual echo, which webrtcvad otherwise hears; in a room without
    echo it costs the quiet distant talker)."""
    return setting == "on" or (setting == "auto" and echo_cancelling)


def from_config(
    audio: Any,
    speech_output: bool,
    reference: ReferenceSource | None,
    mic_timed: Any = None,
    mic_echo: Callable[[float], None] | None = None,
) -> tuple[EchoCanceller | None, list[str]]:
    """The capture chain's canceller for ``[audio]`` (None when nothing is asked), and one-line notices.

    ``echo_cancel``: "on" needs pywebrtc-audio (ConfigError naming the extra); "auto" is on while speech output
    is enabled and the package is there (else a notice); "off" never. ``noise_suppression`` / ``auto_gain``
    need the package too. ``reference`` is the player's far end (ignored when echo cancellation is off)."""
    notices: list[str] = []
    want_aec = audio.echo_cancel == "on" or (audio.echo_cancel == "auto" and speech_output)
    if want_aec and audio.echo_cancel == "auto" and not available():
        notices.append(f"echo cancellation is off: pywebrtc-audio is not installed ({INSTALL_HINT})")
        want_aec = False
    ns = ns_wanted(audio.noise_suppression, want_aec)
    if not (want_aec or ns or audio.auto_gain):
        return None, notices
    canceller = EchoCanceller(
        reference if want_aec else None,
        noise_suppression=ns,
        auto_gain=audio.auto_gain,
        mic_timed=mic_timed,
        mic_echo=mic_echo,
    )
    return canceller, notices
