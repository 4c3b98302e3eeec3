"""Device-loss recovery: a source that survives its microphone being unplugged and plugged back.

PortAudio has no unplug event: a lost device shows up as a stream error or as callbacks that simply stop.
:class:`ReconnectingSource` wraps a factory of sources (a ``MicrophoneSource``) and reopens the same device BY
NAME, with PortAudio re-initialised so that its device list is fresh (a device that comes back may have
another index, or may not have existed when PortAudio was initialised).

It follows the capture stage's recovery protocol (``voiceassist.pipeline.capture``), and also works for a plain reader:

1. ``read()``: the current source raises ``DeviceError`` (its stream error, or its own one-second "no
   callbacks" check), or delivers nothing for ``stall_s``. The source is closed, ``on_state("lost", why)``
   is called once, and the DeviceError is raised once, so the App shows "device lost" and reports it.
2. ``start()`` after a loss is one reconnection attempt: re-initialise PortAudio (only when no stream of this
   process is open, see :func:`reinitialize_portaudio`), build a new source for the pinned device name, start
   it (MicrophoneSource.start returns once audio flows). It raises DeviceError while the device is still
   gone; the App calls ``close()`` + ``start()`` again every ``RETRY_DEVICE_S`` (1 s). On success
   ``on_state("open", name)``.
3. A reader that simply keeps calling ``read()`` after the loss gets None, and attempts happen inside
   ``read()`` on a backoff of 0.1, 0.2, 0.3, then every 0.5 s.

Time to resume after the device comes back: at most one retry interval (1 s in the App) + PortAudio's init
(~30 ms) + the wait for the first callback (ms on hardware; through PulseAudio's ALSA plugin the first stream
after an init can take ~2 s, which MicrophoneSource cuts to ~1 s by reopening once) — about 2.1 s, within the
3 s required. The counters (``stats``) carry over from one underlying source to the next. Everything runs in
the thread that calls ``read()``/``start()`` (the App's capture thread), nothing in the device callback.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from voiceassist.errors import DeviceError

# The reading thread did not run for this long: a freeze of this process, not of the device (same as the
# microphone's own check, voiceassist.audio.sources.FREEZE_GAP_S).
FREEZE_GAP_S = 0.5

log = logging.getLogger("voiceassist.audio")

# s to wait before reconnection attempt 1, 2, ... when read() keeps being called after a loss; the last value
# repeats (the App instead calls close() + start() on its own 1 s cadence).
BACKOFF_S = (0.1, 0.2, 0.3, 0.5)
# No block at all for this long = the device is gone (PortAudio has no unplug event). MicrophoneSource checks
# its callbacks itself after 1 s with a better message; this is the backstop for sources that do not.
STALL_S = 1.5

# One re-initialisation at a time in this process (the input and the output device may be lost together).
_PA_LOCK = threading.Lock()


def open_stream_count() -> int:
    """How many sounddevice streams of this process are open (not closed).

    sounddevice keeps no registry, so the garbage collector's list of live objects is searched; this runs
    only while a device is lost (at most a few times a second), never on the audio path.
    """
    try:
        import sounddevice as sd
    except (ImportError, OSError):
        return 0
    opened = sd._ffi.typeof("PaStream*")  # a stream whose Pa_OpenStream failed still holds a PaStream**
    n = 0
    for obj in gc.get_objects():
        # type(), not isinstance(): isinstance() also reads obj.__class__, and some objects warn when it is read
        # (torch's deprecated torch.distributed.reduce_op printed a FutureWarning on a device loss).
        if issubclass(type(obj), sd._StreamBase):
            try:
                ptr = obj._ptr
                n += ptr != sd._ffi.NULL and sd._ffi.typeof(ptr) is opened
            except Exception:
                continue
    return n


def reinitialize_portaudio() -> bool:
    """Terminate and initialise PortAudio again so that its device list is re-read; True when done.

    ``Pa_Terminate`` closes every stream of the process, so this is only safe while no stream is open: it is
    skipped (False) while any sounddevice stream is open — the speaker playing through another device, or a
    lost stream whose close is still hanging. Reopening by name is then tried on the old list, which still
    works when the device comes back under the same ALSA/PulseAudio name. Other code that opens streams while
    this runs is not locked out (sounddevice has no hook); the speaker opens its stream per reply, and a
    device loss rarely coincides with one.
    """
    try:
        import sounddevice as sd
    except (ImportError, OSError):
        return False
    with _PA_LOCK:
        others = open_stream_count()
        if others:
            log.debug("PortAudio not re-initialised: %d stream(s) still open", others)
            return False
        try:
            sd._terminate()
        except Exception as err:  # PortAudioError, or not initialised
            log.debug("Pa_Terminate: %s", err)
        try:
            sd._initialize()
        except Exception as err:
            raise DeviceError(f"PortAudio could not be re-initialised ({err}); restart the service") from None
        return True


class ReconnectingSource:
    """An AudioSource that reopens its device after a loss; see the module docstring.

    ``factory(name)`` builds a new, unstarted source: ``name`` is None for the first open (use what is
    configured) and afterwards the device name the first open resolved to, so a reconnection reopens the same
    device by name even when its index changed. ``on_state(state, detail)`` receives ``"open"`` (detail: the
    device name), ``"lost"`` (the reason) and ``"closed"``; it is called from the reading thread, must not
    block, and its errors are logged and ignored.
    """

    def __init__(
        self,
        factory: Callable[[str | None], Any],
        *,
        on_state: Callable[[str, str], None] | None = None,
        stall_s: float = STALL_S,
        backoff_s: tuple[float, ...] = BACKOFF_S,
        reinit: bool = True,
    ) -> None:
        self._factory = factory
        self.on_state = on_state
        self.stall_s = stall_s  # s without a block before the device counts as lost
        self.backoff_s = backoff_s
        self.reinit = reinit  # re-initialise PortAudio before a reconnection attempt
        self.name = "microphone"
        self.realtime = True
        self.is_device = True
        self.device_name: str | None = None  # pinned by the first successful open
        self.stats: Any = None  # CaptureStats, shared with every underlying source
        self.state = "closed"  # "open" | "lost" | "closed"
        self.lost_count = 0  # losses so far
        self.reconnects = 0  # successful reopenings after a loss
        self.last_error = ""
        self._inner: Any = None
        self._attempt = 0
        self._next_attempt = 0.0
        self._last_block = 0.0
        self._last_read = 0.0  # when read() last returned, s (monotonic; 0 = never)
        self._lock = threading.RLock()  # start/read/close may come from different threads

    # ---- AudioSource ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Open the device; after a loss, one reconnection attempt. Raises DeviceError while it is missing."""
        with self._lock:
            if self._inner is not None:
                return
            if self.device_name is not None and self.reinit:
                reinitialize_portaudio()
            try:
                self._open()
            except DeviceError as err:
                self.last_error = str(err)
                raise
            if self.state == "lost":
                self.reconnects += 1
            self._set_state("open", self.name)

    def read(self, timeout: float) -> Any:
        """The next block, None on timeout; raises DeviceError once when the device is lost (then None
        while it stays lost, with reconnection attempts on the backoff)."""
        with self._lock:
            if self._inner is None:
                if self.state == "lost":
                    return self._retry_step(timeout)
                raise DeviceError(f"input device {self.name!r} is not open; start() it first")
            t0 = time.monotonic()
            try:
                block = self._inner.read(timeout)
            except DeviceError as err:
                self._lose(str(err))
                raise
            now = time.monotonic()
            # This read took far longer than its timeout, or the previous one returned long ago: the process
            # was frozen (SIGSTOP, a stalled machine), not the device (#16). Count the stall from now; the
            # inner source, whose stream is still open, delivers what PortAudio kept.
            if now - t0 > timeout + FREEZE_GAP_S or (self._last_read and t0 - self._last_read > FREEZE_GAP_S):
                self._last_block = max(self._last_block, now)
            self._last_read = now
            if block is not None:
                self._last_block = now
            elif now - self._last_block > self.stall_s:
                why = f"input device {self.name!r} delivered no audio for {now - self._last_block:.1f} s"
                self._lose(why)
                raise DeviceError(why + "; reopening it when it comes back")
            return block

    @property
    def timing_reported(self) -> bool:
        """The open device's MicrophoneSource.timing_reported (its blocks carry ADC times); True while none is
        open. The echo canceller asks the App's source, which in the CLI is this wrapper: without this it saw
        True for every device and never said that it falls back to estimating the delay."""
        return bool(getattr(self._inner, "timing_reported", True))

    def observe_echo(self, lag_s: float) -> None:
        """Passed to the open device (MicrophoneSource.observe_echo); nothing while none is open. The capture
        thread, as read(): the lock is not taken (it may be held by a read waiting for audio)."""
        observe = getattr(self._inner, "observe_echo", None)
        if observe is not None:
            observe(lag_s)

    def close(self) -> None:
        """Close the device. After a loss the state stays "lost" (start() reconnects); else "closed"."""
        with self._lock:
            self._close_inner()
            if self.state == "open":
                self._set_state("closed", "")

    # ---- internals (called with the lock held) -------------------------------------------------------------

    def _open(self) -> None:
        src = self._factory(self.device_name)
        if self.stats is not None and hasattr(src, "stats"):
            src.stats = self.stats  # one set of counters across reconnections
        src.start()  # DeviceError propagates
        self._inner = src
        self.name = getattr(src, "name", self.name) or self.name
        if self.device_name is None:
            self.device_name = self.name
        if self.stats is None:
            self.stats = getattr(src, "stats", None)
        self._last_block = time.monotonic()

    def _close_inner(self) -> None:
        inner, self._inner = self._inner, None
        if inner is not None:
            try:
                inner.close()
            except Exception as err:  # a lost stream may fail to close; it is gone either way
                log.debug("closing the lost source: %s", err)

    def _lose(self, why: str) -> None:
        self.lost_count += 1
        self.last_error = why
        self._close_inner()
        self._attempt = 0
        self._next_attempt = time.monotonic() + self.backoff_s[0]
        self._set_state("lost", why)

    def _retry_step(self, timeout: float) -> Any:
        now = time.monotonic()
        if now < self._next_attempt:
            time.sleep(max(0.0, min(timeout, self._next_attempt - now)))
            return None
        self._attempt += 1
        try:
            self.start()
        except DeviceError as err:
            wait = self.backoff_s[min(self._attempt, len(self.backoff_s) - 1)]
            self._next_attempt = time.monotonic() + wait
            log.debug("reconnection attempt %d failed: %s", self._attempt, err)
        return None

    def _set_state(self, state: str, detail: str) -> None:
        self.state = state
        if self.on_state is not None:
            try:
                self.on_state(state, detail)
            except Exception:
                log.exception("device state callback failed")


def reconnecting_microphone(audio: Any, on_state: Callable[[str, str], None] | None = None) -> ReconnectingSource:
    """The configured microphone (``audio``: AudioConfig), reopened by name after a loss."""
    from voiceassist.audio.sources import MicrophoneSource

    def factory(name: str | None) -> Any:
        return MicrophoneSource(
            name if name is not None else (audio.input_device or None),
            block_ms=audio.block_ms,
            queue_blocks=audio.queue_blocks,
        )

    return ReconnectingSource(factory, on_state=on_state)
