"""Playing synthesised sentences on the output device, and knowing exactly what has been played.

One sounddevice output stream, fed by its callback from a list of :class:`Segment` (one per sentence) in 20 ms
blocks. The callback only copies samples and moves two counters (segment index, sample position); everything
else reads those counters under the same short lock.

What counts as spoken: every sample the callback has handed to the device will be heard (nothing can call
it back), so "spoken" is measured in samples delivered, exactly. :meth:`Player.stop` makes the next block a
5 ms fade-out followed by silence, so sound stops within one block plus the device's output latency
(20 ms + ~45 ms through PulseAudio), and nothing after the fade is counted. Within the sentence that was
playing, the fraction of its voiced samples delivered is mapped to characters and cut at a word
(:func:`~voiceassist.speech.sentences.spoken_prefix`).

Times are on the capture clock (``time.monotonic()``): the callback converts PortAudio's DAC time of each
block into it, so :meth:`Player.quiet_since` is when the last sample really left the speaker.

Echo cancellation (#12): with a far-end reference attached (:meth:`Player.set_reference`), the callback also
hands every block it writes (silence included: the exact samples the device gets) and the capture-clock time
its first sample is heard to ``FarEndReference.write`` — a copy and a lock-free append, nothing more.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from voiceassist.errors import DeviceError
from voiceassist.speech.sentences import spoken_prefix

BLOCK_MS = 20  # callback block; stop() takes effect at the next block
FADE_MS = 5  # fade-out on stop(), against a click
VOICED_LEVEL = 0.02  # |sample| above this is voice (for the spoken fraction); espeak peaks at ~0.75
MERGE_GAP_S = 0.05  # audio blocks closer than this belong to one playback interval
CLOCK_MATCH_S = 1.0  # PortAudio's currentTime this close to a clock of ours is on that clock, s


@dataclass(frozen=True)
class Segment:
    """One sentence ready to play."""

    turn: int
    text: str  # the exact slice of the reply this sentence covers
    samples: np.ndarray  # mono float32 at the player's rate; empty when there was nothing to say
    voiced: tuple[int, int] = (0, 0)  # first voiced sample, last voiced sample + 1

    @staticmethod
    def make(turn: int, text: str, samples: np.ndarray) -> Segment:
        loud = np.flatnonzero(np.abs(samples) > VOICED_LEVEL)
        voiced = (int(loud[0]), int(loud[-1]) + 1) if len(loud) else (0, len(samples))
        return Segment(turn, text, samples, voiced)

    def spoken(self, pos: int) -> str:
        """The text heard once ``pos`` samples of this segment have been played."""
        if pos >= len(self.samples):
            return self.text
        a, b = self.voiced
        return spoken_prefix(self.text, (pos - a) / max(1, b - a))


class Player:
    """Plays segments in order; see the module docstring. Thread-safe."""

    def __init__(self, device: str | int | None = None) -> None:
        self.device = device
        self.rate = 0  # the stream's sample rate, Hz (the device's default); 0 until opened
        self.latency_s = 0.0  # the stream's output latency as PortAudio reports it
        self._stream: Any = None
        self._lock = threading.Lock()
        self._segs: list[Segment] = []  # producer: enqueue() (speaker thread); consumer: the callback
        self._idx = 0  # segment being played
        self._pos = 0  # samples of it delivered
        self._fade: np.ndarray | None = None  # set by stop(): played by the next callback, then silence
        self._frozen: dict[int, str] = {}  # turn → spoken text, once fixed (stopped, or pruned after playing)
        self._audio_end = -np.inf  # capture-clock time the last delivered sample is heard, s
        self._intervals: collections.deque[list[float]] = collections.deque(maxlen=256)  # [start, end] heard
        self._first_heard: dict[int, float] = {}  # turn → capture-clock time its first sample is heard, s
        self._first_delivered: dict[int, float] = {}  # turn → time its first sample went to the device, s
        self._last_callback = 0.0
        self._callbacks = 0
        self._idle_since = time.monotonic()
        self._reference: Any = None  # audio.farend.FarEndReference fed by the callback (None: nobody listens)
        self.dac_timed = True  # the last callback had a usable DAC time (False: stamped with latency_s)

    def set_reference(self, reference: Any) -> None:
        """Feed ``reference`` (an ``audio.farend.FarEndReference``) with every block written from now on."""
        self._reference = reference

    # ---- stream --------------------------------------------------------------------------------------------

    def open(self) -> None:
        """Open and start the output stream if it is not running. Raises DeviceError (one line)."""
        if self._stream is not None:
            return
        from voiceassist.audio.devices import _sd, resolve_device

        sd = _sd()
        info = resolve_device(self.device, "output")
        rate = int(info["default_samplerate"])
        channels = 1
        try:
            sd.check_output_settings(device=info["index"], channels=1, samplerate=rate, dtype="float32")
        except Exception:  # noqa: BLE001  (a device that wants stereo)
            channels = min(2, int(info["max_output_channels"]))
        try:
            stream = sd.OutputStream(
                device=info["index"],
                samplerate=rate,
                channels=channels,
                dtype="float32",
                blocksize=rate * BLOCK_MS // 1000,
                latency="low",
                callback=self._callback,
            )
            stream.start()
        except Exception as err:  # noqa: BLE001  (PortAudioError and friends)
            raise DeviceError(
                f"cannot open output device {info['name']!r} for speech ({err}); "
                "check tts output with `voiceassist devices`"
            ) from None
        self.rate, self.latency_s, self._stream = rate, float(stream.latency), stream
        self._last_callback = time.monotonic()
        self._idle_since = time.monotonic()

    @property
    def is_open(self) -> bool:
        return self._stream is not None

    def running(self, min_callbacks: int = 10) -> bool:
        """The stream is open and the device is pulling blocks (past the first few that only prime its buffer)."""
        return self._stream is not None and self._callbacks >= min_callbacks

    def stalled(self, after_s: float = 3.0) -> bool:
        """Open, but the stream ended on an error or the device has not asked for audio for ``after_s``
        (device lost or stuck)."""
        stream = self._stream
        if stream is None:
            return False
        try:
            active = bool(stream.active)
        except Exception:  # noqa: BLE001  (a stream whose device vanished)
            active = False
        return not active or time.monotonic() - self._last_callback > after_s

    def discard(self) -> None:
        """Drop everything queued (the device is gone): queued sentences count as passed, so the spoken text
        stays a prefix of the reply and nothing waits for a device that will not play it."""
        with self._lock:
            for t in {s.turn for s in self._segs}:
                self._frozen[t] = "".join(s.text for s in self._segs if s.turn == t)
            self._segs, self._idx, self._pos, self._fade = [], 0, 0, None

    def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.abort()
                stream.close()
            except Exception:  # noqa: BLE001  (a lost device may fail to close; nothing to do)
                pass
        self._callbacks = 0

    def close_if_idle(self, idle_s: float) -> None:
        """Release the device after ``idle_s`` without anything to play."""
        if self._stream is not None and not self.busy() and time.monotonic() - self._idle_since > idle_s:
            self.close()

    def _callback(self, outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        now, wall = time.monotonic(), time.time()
        dac, current = time_info.outputBufferDacTime, time_info.currentTime
        ahead = dac - current
        timed = dac > 0 and 0.0 < ahead < 2.0
        if not timed:
            ahead = self.latency_s  # host API without DAC times
        elif abs(current - wall) < CLOCK_MATCH_S:
            # PortAudio's clock is the wall clock (ALSA, PulseAudio): map the DAC time itself onto the capture
            # clock. `now + ahead` would add however late this callback runs after PortAudio read its clock
            # (the GIL, a loaded machine: tens of ms, measured up to 200), which moves the echo canceller's
            # reference against the echo.
            ahead = dac + (now - wall) - now
        elif abs(current - now) < CLOCK_MATCH_S:
            ahead = dac - now  # PortAudio's clock is the monotonic clock itself
        out = np.zeros(frames, dtype=np.float32)
        with self._lock:
            self._last_callback = now
            self._callbacks += 1
            filled = 0
            if self._fade is not None:
                filled = min(frames, len(self._fade))
                out[:filled] = self._fade[:filled]
                self._fade = None
            while filled < frames and self._idx < len(self._segs):
                seg = self._segs[self._idx]
                n = min(frames - filled, len(seg.samples) - self._pos)
                if n and seg.turn not in self._first_heard:
                    self._first_heard[seg.turn] = now + ahead + filled / self.rate
                    self._first_delivered[seg.turn] = now
                out[filled : filled + n] = seg.samples[self._pos : self._pos + n]
                filled += n
                self._pos += n
                if self._pos >= len(seg.samples):
                    self._idx += 1
                    self._pos = 0
            if filled:
                start, end = now + ahead, now + ahead + filled / self.rate
                self._audio_end = end
                self._idle_since = now
                if self._intervals and start <= self._intervals[-1][1] + MERGE_GAP_S:
                    self._intervals[-1][1] = end
                else:
                    self._intervals.append([start, end])
        outdata[:] = out[:, None]
        reference = self._reference
        if reference is not None:
            self.dac_timed = timed
            reference.write(out, self.rate, now + ahead, timed)

    # ---- segments ------------------------------------------------------------------------------------------

    def enqueue(self, seg: Segment) -> None:
        """Play ``seg`` after everything queued (its samples must be at :attr:`rate`)."""
        with self._lock:
            self._prune(seg.turn)
            self._segs.append(seg)
            self._frozen.pop(seg.turn, None)
            self._idle_since = time.monotonic()
            if self._stream is None:  # no device: it passes unheard rather than waiting forever
                self._idx, self._pos = len(self._segs), 0

    def _prune(self, turn: int) -> None:
        """Forget played segments of other turns (their spoken text is frozen first). Lock held."""
        old = {s.turn for s in self._segs[: self._idx] if s.turn != turn}
        if not old:
            return
        for t in old:
            self._frozen[t] = self._spoken(t)
        keep = [i for i, s in enumerate(self._segs) if i >= self._idx or s.turn == turn]
        self._segs = [self._segs[i] for i in keep]
        self._idx = sum(1 for i in keep if i < self._idx)
        for t in sorted(self._frozen)[:-16]:  # keep the last few turns' figures only
            del self._frozen[t]
        for t in sorted(self._first_heard)[:-16]:
            del self._first_heard[t]
            self._first_delivered.pop(t, None)

    def _spoken(self, turn: int, extra: int = 0) -> str:
        """Text of ``turn`` heard so far (``extra`` samples more of the current segment). Lock held."""
        if turn in self._frozen:
            return self._frozen[turn]
        parts = [s.text for s in self._segs[: self._idx] if s.turn == turn]
        if self._idx < len(self._segs) and self._segs[self._idx].turn == turn and self._pos + extra > 0:
            parts.append(self._segs[self._idx].spoken(self._pos + extra))
        return "".join(parts)

    def spoken_text(self, turn: int) -> str:
        with self._lock:
            return self._spoken(turn)

    def unfinished_turns(self) -> list[int]:
        """Turns with samples not yet handed to the device, in playing order (the one playing first)."""
        with self._lock:
            return list(dict.fromkeys(s.turn for s in self._segs[self._idx :]))

    def stop(self, turn: int) -> str:
        """Silence within one block (after a 5 ms fade); drop everything queued; return ``turn``'s spoken text."""
        with self._lock:
            fade_n = 0
            if self._idx < len(self._segs) and self._stream is not None:
                seg = self._segs[self._idx]
                tail = seg.samples[self._pos : self._pos + max(1, self.rate * FADE_MS // 1000)]
                fade_n = len(tail)
                if fade_n:
                    self._fade = tail * np.linspace(1.0, 0.0, fade_n, dtype=np.float32)
            spoken = self._spoken(turn, extra=fade_n)
            for t in {s.turn for s in self._segs} - {turn}:
                self._frozen[t] = self._spoken(t)
            self._frozen[turn] = spoken
            self._segs, self._idx, self._pos = [], 0, 0
            return spoken

    # ---- state ---------------------------------------------------------------------------------------------

    def busy(self) -> bool:
        """Something is queued, playing, or still on its way out of the device."""
        with self._lock:
            return self._idx < len(self._segs) or self._fade is not None or time.monotonic() < self._audio_end

    def queued_seconds(self) -> float:
        with self._lock:
            if not self.rate:
                return 0.0
            left = sum(len(s.samples) for s in self._segs[self._idx :]) - self._pos
            return max(0, left) / self.rate

    def last_audio_end(self) -> float:
        """Capture-clock time the last sample delivered is (or was) heard; -inf before any."""
        with self._lock:
            return self._audio_end

    def first_heard(self, turn: int) -> float | None:
        """Capture-clock time the first sample of ``turn`` is heard; None if none was played yet."""
        with self._lock:
            return self._first_heard.get(turn)

    def sound_pending(self, turn: int) -> bool:
        """Samples of ``turn`` are queued and not yet handed to the device (its first sound may be to come)."""
        with self._lock:
            return any(s.turn == turn and len(s.samples) for s in self._segs[self._idx :])

    def first_delivered(self, turn: int) -> float | None:
        """Capture-clock time the first sample of ``turn`` was handed to the device (before its latency)."""
        with self._lock:
            return self._first_delivered.get(turn)

    def intervals(self) -> list[tuple[float, float]]:
        """Recent stretches of playback, (start, end) on the capture clock, oldest first."""
        with self._lock:
            return [(a, b) for a, b in self._intervals]
