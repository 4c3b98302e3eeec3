"""Keep ALSA's and PortAudio's own messages off the terminal (#16), without hiding anything else.

Two sources, two means:
- libasound prints ``ALSA lib pcm.c:...`` lines through its error handler: :func:`quiet_alsa` installs one
  (``snd_lib_error_set_handler``, through ctypes) that counts them and logs them at debug level instead.
- PortAudio's ALSA host API prints ``Expression '...' failed in 'src/hostapi/alsa/...'`` straight to C's
  stderr with no hook exported, e.g. from its own thread when a device goes away. :class:`ChatterFilter`
  (used by ``--plain``; the full-screen UI has its own capture, the kiosk's stderr is the journal) puts a
  pipe on fd 2 whose reader forwards every other line at once and drops those, saying once at the end how
  many it dropped.

``VOICEASSIST_AUDIO_DEBUG=1`` turns both off (everything reaches stderr as before). Written by hand: no
library does this; the pattern of the ALSA handler is the usual one for libasound.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import sys
import threading
from typing import Any

log = logging.getLogger("voiceassist.audio")

ENV = "VOICEASSIST_AUDIO_DEBUG"
_CHATTER = re.compile(
    rb"^(ALSA lib |Expression '.*' failed in 'src/|PaAlsa|Cannot connect to server (socket|request channel)|"
    rb"jack server is not running|JackShmReadWritePtr)"
)
_ALSA_HANDLER: Any = None  # the ctypes callback, kept alive for as long as libasound may call it
alsa_messages = 0  # ALSA error-handler calls since quiet_alsa()


def _debug() -> bool:
    return os.environ.get(ENV, "") not in ("", "0")


def quiet_alsa() -> bool:
    """Route libasound's messages to the debug log (once per process); True when installed."""
    global _ALSA_HANDLER
    if _ALSA_HANDLER is not None:
        return True
    if _debug():
        return False
    try:
        # The soname directly: ctypes.util.find_library runs ldconfig (or gcc) in a subprocess.
        lib = ctypes.CDLL("libasound.so.2")
        # void handler(const char *file, int line, const char *function, int err, const char *fmt, ...):
        # the variadic tail is never read, so a fixed prototype is safe on the callee side.
        proto = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p)

        def handler(file: bytes | None, line: int, function: bytes | None, err: int, fmt: bytes | None) -> None:
            global alsa_messages
            alsa_messages += 1
            log.debug(
                "ALSA: %s:%d %s: %s",
                (file or b"").decode(errors="replace"),
                line,
                (function or b"").decode(errors="replace"),
                (fmt or b"").decode(errors="replace"),
            )

        _ALSA_HANDLER = proto(handler)
        lib.snd_lib_error_set_handler(_ALSA_HANDLER)
        return True
    except (OSError, AttributeError):
        return False


def is_chatter(line: bytes) -> bool:
    """A line ALSA or PortAudio printed by itself (not ours, not Python's)."""
    return bool(_CHATTER.match(line.lstrip()))


class ChatterFilter:
    """``with ChatterFilter():`` fd 2 goes through a pipe; audio-library lines are dropped, the rest is
    forwarded at once (a line at a time). On exit fd 2 is restored and the count, if any, said in one line."""

    def __init__(self) -> None:
        self.dropped = 0
        self._saved: int | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> ChatterFilter:
        if _debug():
            return self
        try:
            sys.stderr.flush()
            read_fd, write_fd = os.pipe()
            self._saved = os.dup(2)
            os.dup2(write_fd, 2)
            os.close(write_fd)
        except OSError:
            self._saved = None
            return self
        self._thread = threading.Thread(target=self._read, args=(read_fd,), name="va-stderr-filter", daemon=True)
        self._thread.start()
        return self

    def _forward(self, data: bytes) -> None:
        if self._saved is None:
            return
        try:
            os.write(self._saved, data)
        except OSError:
            pass

    def _read(self, fd: int) -> None:
        with os.fdopen(fd, "rb", buffering=0) as pipe:
            pending = b""
            while True:
                try:
                    data = pipe.read(4096)
                except OSError:
                    return
                if not data:
                    if pending:
                        self._line(pending)
                    return
                pending += data
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    self._line(raw + b"\n")
                if len(pending) > 4096:  # a long line without an end: pass it on as it is
                    self._line(pending)
                    pending = b""

    def _line(self, raw: bytes) -> None:
        if is_chatter(raw):
            self.dropped += 1
            log.debug("audio library: %s", raw.decode(errors="replace").rstrip())
        else:
            self._forward(raw)

    def __exit__(self, *exc: object) -> None:
        if self._saved is None:
            return
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        saved = self._saved
        os.dup2(saved, 2)  # closes the pipe's last writer (ours): the reader sees the end
        if self._thread is not None:
            self._thread.join(timeout=0.5)  # a child process may still hold the pipe: do not wait long
        self._saved = None
        os.close(saved)
        if self.dropped:
            print(
                f"voiceassist: note: {self.dropped} message(s) of the audio libraries (ALSA/PortAudio) were hidden; "
                f"{ENV}=1 shows them",
                file=sys.stderr,
            )
