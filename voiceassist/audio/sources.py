"""Audio sources: one small interface, so that a file can stand in for the microphone anywhere.

Every source hands out :class:`~voiceassist.events.AudioBlock` s of 16 kHz mono float32 whose ``t`` is the
capture clock (``events.now()``, i.e. ``time.monotonic()``) of the block's first sample.

- :class:`MicrophoneSource` — a sounddevice input stream at the device's native rate (and up to 2 channels).
  The PortAudio callback only copies the block, stamps it and enqueues it; downmixing and resampling happen
  in :meth:`MicrophoneSource.read`, on the caller's (capture) thread.
- :class:`FileSource` — a WAV/FLAC/OGG/MP3 file through the same streaming resampler, paced in real time or
  as fast as possible.

Clock of a microphone block: PortAudio tells, in the callback, how long ago the block's first sample reached
the ADC (``currentTime - inputBufferAdcTime``, both on the stream's clock); that lag is subtracted from
``time.monotonic()`` read in the callback. When the host API gives no usable times (zero, negative or > 1 s)
the lag is taken as one block length. A file's clock starts at ``now()`` when it is started and advances by
the samples handed out (so ``block.t - source.start_t`` is the position in the file, in seconds).
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from voiceassist.audio.devices import resolve_device
from voiceassist.audio.files import open_audio, read_blocks
from voiceassist.audio.resample import TARGET_RATE, StreamingResampler
from voiceassist.audio.timeline import StampTimeline
from voiceassist.config import AudioConfig
from voiceassist.errors import AudioFileError, DeviceError
from voiceassist.events import AudioBlock, now

CLOCK_MATCH_S = 1.0  # PortAudio's currentTime this close to time.time() is on the wall clock, s
MAX_CHANNELS = 2  # channels opened on a microphone; devices like ALSA "pulse" offer 32 and we downmix anyway
# PortAudio's "high" input latency: with "low", ALSA's pulse plugin (PulseAudio/PipeWire) often stalls after a
# few callbacks; the extra buffering does not delay our timestamps (they come from the ADC time).
LATENCY = "high"
CLOSE_TIMEOUT_S = 2.0  # a stream whose device vanished can block in Pa_CloseStream; give up waiting after this, s
FIRST_CALLBACK_S = 1.0  # s to wait for the first block after opening a stream before reopening it
START_ATTEMPTS = 3
CLOCK_RESYNC_S = 0.25  # s: a larger offset jump (lost audio) re-anchors the clock at once
# Smaller moves of the measured offset follow audio/timeline.py (refined once, then confirmed jumps and real
# drift only): the ADC stamps wander by ms for seconds, and each move of the block stamps moves the echo
# canceller's reference against the microphone (costing AEC3 dB, measured there). A jump must show on this many
# blocks running (measured in the room: single ADC stamps 11 ms early / 7 ms late at the 1st / 99th percentile,
# so a few running may agree by chance; 10 blocks = 0.2 s at 20 ms).
CLOCK_JUMP_CONFIRM = 10
# The reading thread itself did not run for this long (SIGSTOP/SIGCONT, a machine stalled by load or swap):
# the missing callbacks are then our stall, not the device's, and the device gets a fresh stall_s to deliver
# again before it counts as lost (#16). The reader polls every <= 0.1 s, so 0.5 s is far outside its rhythm.
FREEZE_GAP_S = 0.5
OVERFLOW_LOG_S = 60.0  # input overflows after the first are logged at most this often (with the count), s


class EndOfInput(Exception):
    """The source has no more audio (end of a file)."""


@dataclass
class CaptureStats:
    """Counters of one source (written by one thread, read by others: plain ints are enough)."""

    blocks: int = 0  # blocks received from the device / file
    dropped_blocks: int = 0  # blocks dropped because the capture queue was full (the oldest goes first)
    overflows: int = 0  # PortAudio input-overflow flags: the device lost samples before we saw them
    stalls: int = 0  # times this process (not the device) stopped for > FREEZE_GAP_S; the stream was kept


@runtime_checkable
class AudioSource(Protocol):
    """What the capture thread reads from; see the module docstring for the clock."""

    @property
    def name(self) -> str:
        """For the status bar and messages: the device or file name."""
        ...

    stats: CaptureStats
    realtime: bool  # blocks arrive in real time (a device, a paced file); False: a file read as fast as possible
    is_device: bool  # a microphone: it can hear the assistant speak, and digital silence there is a fault

    def start(self) -> None: ...

    def read(self, timeout: float) -> AudioBlock | None: ...

    def close(self) -> None: ...


class MicrophoneSource:
    """A PortAudio input device; ``close()`` then ``start()`` opens it again (a lost device can be retried).

    ``read()`` raises DeviceError when the stream reported an error, or when no callback arrived for
    ``stall_s`` seconds (an unplugged USB device or a vanished sound server often just goes quiet).
    """

    def __init__(
        self, device: str | int | None, block_ms: int = 20, queue_blocks: int = 250, stall_s: float = 1.0
    ) -> None:
        self.device = device
        self.block_ms = block_ms
        self.queue_blocks = queue_blocks
        self.stall_s = stall_s  # s without a callback before the device counts as lost
        self.name = str(device) if device not in (None, "") else "default input"
        self.realtime = True
        self.is_device = True
        self.stats = CaptureStats()
        self.rate = 0.0  # Hz, the device's native rate (known after start)
        self.channels = 0
        # Producer: the PortAudio callback (put; drops the oldest when full). Consumer: read() on the
        # capture thread. Items: (frames × channels float32 copy, capture-clock time of its first frame,
        # stream position of its first frame in device frames).
        self._queue: queue.Queue[tuple[np.ndarray, float, int]] = queue.Queue(maxsize=queue_blocks)
        self._stream: Any = None
        self._resampler: StreamingResampler | None = None
        self._lost: str | None = None  # set (by PortAudio's threads) when the stream failed
        self._closing = False  # close() in progress: the stream's end is expected, not a loss
        self._last_callback = 0.0  # capture clock of the latest callback, s
        self._last_check = 0.0  # when the reading thread last looked at the callbacks, s (0 = not yet)
        self._blocks_at_open = 0
        self._cb_frames = 0  # device frames the callback has seen since the stream opened (callback thread)
        self._next_frame = 0  # stream position the resampler expects next, device frames
        self._skipped_s = 0.0  # stream time lost to dropped blocks, s (the resampler joined across it)
        self._out_samples = 0  # 16 kHz samples handed out so far
        self._offset: float | None = None  # capture clock − stream position, s
        self._timeline = StampTimeline(TARGET_RATE, CLOCK_JUMP_CONFIRM)  # when the offset moves (restarted per anchor)
        # The last callback had a usable ADC time (False: stamped one block before the callback). The echo
        # canceller reads it to say once that it falls back to estimating the delay.
        self.timing_reported = True
        self._overflows_said = 0  # stats.overflows when the last overflow warning was logged
        self._overflow_said_at = 0.0  # when it was, capture clock s

    # ---- the PortAudio thread: copy, stamp, enqueue; nothing else -----------------------------------------
    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        t_now, wall = time.monotonic(), time.time()
        if status.input_overflow:
            self.stats.overflows += 1
        adc, current = time_info.inputBufferAdcTime, time_info.currentTime
        lag = current - adc
        self.timing_reported = adc > 0 and 0.0 <= lag < 1.0
        if not self.timing_reported:
            lag = frames / self.rate  # no usable ADC time: the first sample is about one block old
        elif abs(current - wall) < CLOCK_MATCH_S:
            # PortAudio's clock is the wall clock (ALSA, PulseAudio): map the ADC time itself onto the capture
            # clock, so that however late this callback runs (the GIL, a loaded machine) does not move the stamp
            # (the echo canceller aligns the far end by it). Same in speech.player.
            lag = t_now - (adc + (t_now - wall))
        item = (indata.copy(), t_now - lag, self._cb_frames)
        self._cb_frames += frames
        self._last_callback = t_now
        self.stats.blocks += 1
        while True:
            try:
                self._queue.put_nowait(item)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()  # the oldest block goes, so the newest audio is kept
                    self.stats.dropped_blocks += 1
                except queue.Empty:
                    pass

    def _finished(self) -> None:
        if self._stream is not None and self._lost is None and not self._closing:
            self._lost = f"input device {self.name!r} stopped (stream ended unexpectedly)"

    # ---- the capture thread -------------------------------------------------------------------------------
    @property
    def clock_moves(self) -> int:
        """Moves of the block stamps against the sample count other than re-anchors (the refinement after
        each anchor, jumps, drift steps): each moves the echo canceller's reference against the microphone."""
        return self._timeline.moves

    def observe_echo(self, lag_s: float) -> None:
        """The echo canceller's measurement of the echo's lag behind the far end, as this microphone's blocks
        placed it (s; the canceller's own shifts undone): the evidence the timeline's slow moves need
        (audio/timeline.py), as the far end's do. Negated: a microphone placed later than its samples were
        captured makes the lag look longer, the opposite of a late far end. Capture thread (read's thread)."""
        self._timeline.observe_echo(-lag_s)

    @property
    def clock_held(self) -> int:
        """Drift checks where the ADC stamps asked for a slow move that the echo's lag did not show."""
        return self._timeline.held

    def start(self) -> None:
        if self._stream is not None:
            return
        info = resolve_device(self.device, "input")
        self.name = info["name"]
        self.rate = float(info["default_samplerate"])
        self.channels = max(1, min(int(info["max_input_channels"]), MAX_CHANNELS))
        # The first start of this source (a kiosk booting, often on a loaded machine: 13 on 2 cores was seen
        # to leave the first stream without a callback for > 1 s three times, exit 4) waits 1, 2, then 4 s;
        # a reopening after a device loss keeps to 1 s per attempt, so a device that comes back is used soon.
        first = self.stats.blocks == 0
        waited = 0.0
        for attempt in range(START_ATTEMPTS):
            self._open(info)
            # For ~1.5 s after a PulseAudio server starts, a new stream through ALSA's pulse plugin gets no
            # callback at all, and it stays dead; a stream opened later works. Wait for audio before calling
            # the device started, and reopen if none comes.
            wait = FIRST_CALLBACK_S * (2**attempt if first else 1)
            waited += wait
            deadline = now() + wait
            while self.stats.blocks == self._blocks_at_open and now() < deadline:
                time.sleep(0.01)
            if self.stats.blocks > self._blocks_at_open:
                return
            self.close()
        raise DeviceError(
            f"input device {info['index']} {self.name!r} opened but delivers no audio "
            f"(tried {START_ATTEMPTS} times, {waited:.0f} s in all); check it in `voiceassist devices` or pick another "
            "with --input-device / [audio] input_device"
        )

    def _open(self, info: dict[str, Any]) -> None:
        import sounddevice as sd

        self._resampler = StreamingResampler(self.rate, self.channels)
        self._queue = queue.Queue(maxsize=self.queue_blocks)
        self._lost, self._closing = None, False
        self._cb_frames = self._next_frame = self._out_samples = 0
        self._skipped_s = 0.0
        self._offset = None
        self._blocks_at_open = self.stats.blocks
        try:
            stream = sd.InputStream(
                device=info["index"],
                samplerate=self.rate,
                channels=self.channels,
                dtype="float32",
                blocksize=max(1, round(self.rate * self.block_ms / 1000)),
                latency=LATENCY,
                callback=self._callback,
                finished_callback=self._finished,
            )
            self._last_callback = now()
            self._last_check = 0.0
            self._stream = stream
            stream.start()
        except (sd.PortAudioError, ValueError) as err:
            if self._stream is not None:
                self.close()
            self._stream = None
            raise DeviceError(
                f"cannot open input device {info['index']} {self.name!r} at {self.rate:.0f} Hz "
                f"({' '.join(str(err).split())}); is it busy or unplugged? "
                "see `voiceassist devices`"
            ) from None

    def _note_reader_gap(self) -> None:
        """Called on every turn of read()'s loop: a gap since the last one means the reader was frozen."""
        t = now()
        gap = t - self._last_check if self._last_check else 0.0
        self._last_check = t
        if gap > FREEZE_GAP_S:
            self._last_callback = max(self._last_callback, t)  # the device gets a fresh stall_s from now
            if gap > self.stall_s:  # long enough to have been taken for a lost device: say it
                note_stall(self.stats, gap)

    def _note_overflows(self) -> None:
        """Say (from the reading thread: the callback only counts) when PortAudio flagged input overflows:
        the first at once, later ones at most once per OVERFLOW_LOG_S, with the count so far."""
        n = self.stats.overflows
        if self._overflows_said and now() - self._overflow_said_at < OVERFLOW_LOG_S:
            return
        self._overflows_said, self._overflow_said_at = n, now()
        import logging

        logging.getLogger("voiceassist.audio").warning(
            "input overflow on %r: the device dropped audio before it was read (%d overflows so far)",
            self.name,
            n,
            extra={"fields": {"overflows": n}},
        )

    def _check_alive(self) -> None:
        self._note_reader_gap()  # a freeze inside the queue wait shows up here first
        if self._lost is None and now() - self._last_callback > self.stall_s:
            self._lost = (
                f"input device {self.name!r} stopped delivering audio (nothing for "
                f"{now() - self._last_callback:.1f} s): unplugged, or its sound server went away"
            )
        if self._lost is not None:
            raise DeviceError(self._lost)

    def read(self, timeout: float) -> AudioBlock | None:
        if self._stream is None or self._resampler is None:
            raise DeviceError(f"input device {self.name!r} is not open; start() it first")
        deadline = now() + timeout
        while True:
            self._note_reader_gap()
            if self.stats.overflows != self._overflows_said:
                self._note_overflows()
            try:
                raw, t_raw, position = self._queue.get(timeout=max(0.0, min(deadline - now(), 0.1)))
            except queue.Empty:
                self._check_alive()
                if now() >= deadline:
                    return None
                continue
            if position > self._next_frame:  # blocks were dropped before this one: the stream jumps ahead
                self._skipped_s += (position - self._next_frame) / self.rate
            self._next_frame = position + len(raw)
            out = self._resampler.process(raw)
            # Stream position p (s) ↔ capture clock: t = offset + p. Each raw block measures the offset; the
            # host's ADC times jitter by ms (more under load) and wander, so the offset moves only as the
            # StampTimeline decides, and is re-anchored after a large jump (an overflow, a stall). Output
            # sample j is input time j/16000 (soxr compensates its delay) of the audio actually resampled, so a
            # block's first output sample is at out_samples/16000 plus the time lost to dropped blocks.
            measured = t_raw - position / self.rate
            if self._offset is None or abs(measured - self._offset) > CLOCK_RESYNC_S:
                self._offset = measured
                self._timeline.restart()
            else:
                self._offset += self._timeline.update(measured - self._offset, len(raw) / self.rate)
            t = self._offset + self._out_samples / TARGET_RATE + self._skipped_s
            self._out_samples += len(out)
            if len(out):
                return AudioBlock(out, t)
            if now() >= deadline:
                return None

    def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is None:
            return
        self._closing = True
        # A stream whose server vanished can hang in Pa_CloseStream: close it on a helper thread and stop
        # waiting after CLOSE_TIMEOUT_S (the thread is a daemon, so it never blocks exit).
        closer = threading.Thread(target=stream.close, kwargs={"ignore_errors": True}, daemon=True, name="va-mic-close")
        closer.start()
        closer.join(CLOSE_TIMEOUT_S)


def note_stall(stats: CaptureStats, gap_s: float) -> None:
    """Count and log a stall of this process (the reading thread did not run for ``gap_s`` s)."""
    stats.stalls += 1
    import logging

    logging.getLogger("voiceassist.audio").warning(
        "capture stalled for %.1f s (this process or the machine was frozen, not the device); the input stream "
        "is kept and the audio it delivers is used (%d overflows so far)",
        gap_s,
        stats.overflows,
        extra={"fields": {"capture_stall_s": round(gap_s, 2), "stalls": stats.stalls}},
    )


class FileSource:
    """An audio file as a source: real-time pacing (like a microphone) or as fast as it can be read."""

    def __init__(self, path: str, realtime: bool = True, block_ms: int = 20) -> None:
        self.path = str(path)
        self.realtime = realtime
        self.is_device = False
        self.block_samples = max(1, TARGET_RATE * block_ms // 1000)  # 16 kHz samples per block
        self.name = Path(path).name
        self.stats = CaptureStats()
        self.start_t = 0.0  # capture clock of the file's first sample, s (set by start)
        self.duration_s = 0.0  # the file's length from its header, s
        self._file: Any = None
        self._blocks: Any = None
        self._resampler: StreamingResampler | None = None
        self._pending = np.zeros(0, np.float32)  # resampled, not yet handed out
        self._eof = False
        self._emitted = 0  # 16 kHz samples handed out

    def start(self) -> None:
        if self._file is not None:
            return
        self._file = open_audio(self.path)
        self.duration_s = self._file.frames / self._file.samplerate
        self._blocks = read_blocks(self._file, self.path)
        self._resampler = StreamingResampler(self._file.samplerate, self._file.channels)
        self._pending, self._eof, self._emitted = np.zeros(0, np.float32), False, 0
        self.start_t = now()

    def _fill(self) -> None:
        assert self._resampler is not None
        parts = [self._pending]
        have = len(self._pending)
        while have < self.block_samples and not self._eof:
            raw = next(self._blocks, None)
            out = self._resampler.flush() if raw is None else self._resampler.process(raw)
            self._eof = raw is None
            parts.append(out)
            have += len(out)
        if len(parts) > 1:
            self._pending = np.concatenate(parts)

    def read(self, timeout: float) -> AudioBlock | None:
        if self._file is None:
            raise AudioFileError(f"{self.name} is not open; start() it first")
        if len(self._pending) < self.block_samples and not self._eof:
            self._fill()
        if not len(self._pending):
            if self._emitted == 0:
                raise AudioFileError(f"audio file {self.path} contains no audio; record or choose another file")
            raise EndOfInput(self.name)
        samples = self._pending[: self.block_samples]
        t = self.start_t + self._emitted / TARGET_RATE
        if self.realtime:
            # A block is "captured" once its last sample has been played in real time.
            wait = t + len(samples) / TARGET_RATE - now()
            if wait > timeout:
                time.sleep(max(0.0, timeout))
                return None
            if wait > 0:
                time.sleep(wait)
        self._pending = self._pending[len(samples) :]
        self._emitted += len(samples)
        self.stats.blocks += 1
        return AudioBlock(np.array(samples, dtype=np.float32, copy=True), t)

    def close(self) -> None:
        f, self._file = self._file, None
        if f is not None:
            f.close()


def open_source(audio: AudioConfig, from_file: str | None = None, fast: bool = False) -> AudioSource:
    """The source the configuration asks for (not started): ``from_file`` if given, else the microphone
    ``audio.input_device`` (an index string, a name substring, or empty for the default)."""
    if from_file:
        return FileSource(from_file, realtime=not fast, block_ms=audio.block_ms)
    device: str | int | None = audio.input_device or None
    return MicrophoneSource(device, block_ms=audio.block_ms, queue_blocks=audio.queue_blocks)
