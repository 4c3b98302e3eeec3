"""Keep ALSA's, PortAudio's and the decoders' own messages off the terminal (#16), without hiding anything else.

- libasound prints ``ALSA lib pcm.c:...`` lines through its error handler: :func:`quiet_alsa` installs one
  (``snd_lib_error_set_handler``, through ctypes) that counts them and logs them at debug level instead.
- PortAudio's ALSA host API prints ``Expression '...' failed in 'src/hostapi/alsa/...'`` straight to C's
  stderr with no hook exported (``PaUtil_SetDebugPrintFunction`` is not in Debian's libportaudio.so.2), e.g.
  from its own thread when a device goes away. :class:`ChatterFilter` (``--plain``) puts a pipe on fd 2 whose
  reader forwards every other line at once and drops those, saying once at the end how many it dropped.
- mpg123 (libsndfile's MP3 decoder) and the TFLite loader print on their own on damaged input that we report
  ourselves in one line: :class:`QuietDecoders` around those calls.

One implementation, :class:`Fd2Pipe`, does the fd-2 work for these and for the full-screen UI's capture
(``tui.stderr``): every redirection of fd 2 nests under one lock, and lines are never lost or reordered
within a filter. ``VOICEASSIST_AUDIO_DEBUG=1`` turns the ALSA handler and the ``--plain`` filter off
(everything reaches stderr as before). Written by hand: no library does this; the pattern of the ALSA
handler is the usual one for libasound. The kiosk's stderr is the journal: only the ALSA part applies there.
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
# libspeexdsp (the wake word's linear echo canceller, wake/linear.py) prints "warning: The echo canceller started
# acting funny and got slapped (reset). It swears it will behave now." when its adaptive filter diverges and it
# resets itself (seen live in double talk): its own recovery, nothing for the user to do.
_CHATTER = re.compile(
    rb"^(ALSA lib |Expression '.*' failed in 'src/|PaAlsa|Cannot connect to server (socket|request channel)|"
    rb"jack server is not running|JackShmReadWritePtr|warning: The echo canceller started acting funny)"
)
# Decoders we call on files we check ourselves: mpg123 inside libsndfile ("Note: ...", "Warning: ...",
# "[src/libmpg123/...] error: ..."), the TFLite C library ("ERROR: ...").
_DECODER = re.compile(rb"^(Note: |Warning: |\[src/libmpg123/|ERROR: )")
# mpg123's own lines found after another thread's unfinished line (``line of ours[src/libmpg123/...] error``).
_DECODER_GLUED = re.compile(rb"\[src/libmpg123/|Note: (Illegal Audio-MPEG-Header|Trying to resync|Skipped |Hit end)")
# PortAudio's and libasound's lines found after another thread's unfinished line (``reply text Expression '...'
# failed in 'src/hostapi/...'``: print() writes a text and its newline apart, PortAudio's thread writes between).
_CHATTER_GLUED = re.compile(rb"Expression '.*' failed in 'src/|ALSA lib [\w/.-]+\.c:\d+:")
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


def is_decoder_chatter(line: bytes) -> bool:
    """A line a decoder prints on its own while we open or read a file we check ourselves: libsndfile's MP3
    decoder (mpg123: ``Note: Illegal Audio-MPEG-Header ...``) and the TFLite loader (``ERROR: ...``)."""
    return bool(_DECODER.match(line.lstrip())) or is_chatter(line)


# Every change of fd 2 in this process takes this lock, so redirections nest and never interleave (one thread's
# restore undoing another's). Re-entrant: a quiet window may open inside a filter on the same thread.
_FD2_LOCK = threading.RLock()
_HOSTS: list[Fd2Pipe] = []  # the long-lived filters now active, innermost last (under _FD2_LOCK)
SYNC_WAIT_S = 2.0  # how long a filter waits for its reader to pass on what was written before a mark, s


class Fd2Pipe:
    """While active, fd 2 (C libraries, Python's stderr, child processes) goes into a pipe; a reader thread
    hands each line to :meth:`_line` (the subclass's policy; here: pass it on to the previous fd 2 at once).

    The one implementation behind ``--plain``'s filter, the full-screen UI's capture and the quiet windows
    around decoders. Nothing written is lost and lines keep their order: at the end a marker line is written
    through the pipe and awaited (everything before it has been handled) before fd 2 is restored, and the
    reader goes on for whatever still holds the pipe (a child process started meanwhile). (A quiet window with
    no filter around it has a pipe of its own: another thread's line written just as it closes can come out
    late, or apart from its newline; never lost. Inside ``--plain`` and the UI no window swaps fd 2.) An
    earlier version
    pointed fd 2 at /dev/null around decoder calls: fd 2 is process-wide, so the lines other threads printed
    meanwhile vanished (#16: ``--plain``'s header and stdin notice, the moment ``--events`` failed)."""

    thread_name = "va-stderr"
    host = True  # quiet windows opened while this filter is innermost use it instead of a pipe of their own

    def __init__(self) -> None:
        self._restore: int | None = None  # the previous fd 2, put back at the end
        self._out: int | None = None  # another copy of it, where the reader passes lines on (closed at EOF)
        self._pipe_ino: tuple[int, int] | None = None
        self._thread: threading.Thread | None = None
        self._mark = b"\x00va-stderr-mark-%d-" % id(self)
        self._marks: dict[int, threading.Event] = {}
        self._next_mark = 0
        self.quiet = 0  # quiet windows open on this filter: decoder lines are dropped while > 0

    def __enter__(self) -> Fd2Pipe:
        with _FD2_LOCK:
            self._begin()
        return self

    def _begin(self) -> None:
        try:
            sys.stderr.flush()
        except (OSError, ValueError, AttributeError):
            pass
        try:
            read_fd, write_fd = os.pipe()
        except OSError:
            return  # nothing to filter with: fd 2 stays as it is
        try:
            self._restore = os.dup(2)
            self._out = os.dup(2)
            st = os.fstat(write_fd)
            self._pipe_ino = (st.st_dev, st.st_ino)
            os.dup2(write_fd, 2)
        except OSError:
            for fd in (self._restore, self._out, read_fd):
                if fd is not None:
                    os.close(fd)
            self._restore = self._out = None
            return
        finally:
            os.close(write_fd)
        thread = threading.Thread(target=self._read, args=(read_fd,), name=self.thread_name, daemon=True)
        try:
            thread.start()
        except RuntimeError:  # no thread to read the pipe: put fd 2 back rather than let writers block
            os.dup2(self._restore, 2)
            for fd in (self._restore, self._out, read_fd):
                os.close(fd)
            self._restore = self._out = None
            return
        self._thread = thread
        if self.host:
            _HOSTS.append(self)

    def _read(self, fd: int) -> None:
        try:
            with os.fdopen(fd, "rb", buffering=0) as pipe:
                pending = b""
                while True:
                    try:
                        data = pipe.read(4096)
                    except OSError:
                        return
                    if not data:  # every writer closed
                        if pending:
                            self._handle(pending)
                        return
                    pending += data
                    while b"\n" in pending:
                        raw, pending = pending.split(b"\n", 1)
                        if not self._marked(raw):
                            self._handle(raw + b"\n")
                    if len(pending) > 4096:  # a long line without an end: pass it on as it is
                        self._handle(pending)
                        pending = b""
        finally:
            for ev in list(self._marks.values()):
                ev.set()
            out, self._out = self._out, None
            if out is not None:
                os.close(out)

    def _marked(self, raw: bytes) -> bool:
        """``raw`` ends with one of our marks: say it was reached (True)."""
        k = raw.rfind(self._mark)
        if k < 0 or not raw[k + len(self._mark) :].isdigit():
            return False
        # What another thread wrote just before, without its newline yet (print() writes the text and the
        # newline apart), is handled now: its newline follows, so the line stays whole and in its place.
        if k:
            self._handle(raw[:k])
        ev = self._marks.get(int(raw[k + len(self._mark) :]))
        if ev is not None:
            ev.set()
        return True

    def sync(self) -> None:
        """Wait until the reader has handled everything written to fd 2 (by any thread) before this call."""
        if not self._ours():
            return
        self._next_mark += 1
        n = self._next_mark
        ev = self._marks[n] = threading.Event()
        try:
            os.write(2, self._mark + b"%d\n" % n)
            ev.wait(SYNC_WAIT_S)
        except OSError:
            pass
        finally:
            self._marks.pop(n, None)

    def _handle(self, raw: bytes) -> None:
        if self.quiet:
            if is_decoder_chatter(raw):
                log.debug("decoder: %s", raw.decode(errors="replace").rstrip())
                return
            glued = _DECODER_GLUED.search(raw)
            if glued:  # the start is another thread's line (its newline follows later): keep that part only
                log.debug("decoder: %s", raw[glued.start() :].decode(errors="replace").rstrip())
                raw = raw[: glued.start()]
        self._line(raw)

    def _line(self, raw: bytes) -> None:
        """One line as written (its newline included, if it had one)."""
        self._forward(raw)

    def _forward(self, data: bytes) -> None:
        out = self._out
        while data and out is not None:
            try:
                data = data[os.write(out, data) :]
            except OSError:
                return

    def _ours(self) -> bool:
        """fd 2 is this filter's pipe now (every redirection nests under the lock; this is a guard)."""
        if self._pipe_ino is None:
            return False
        try:
            st = os.fstat(2)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self._pipe_ino

    def __exit__(self, *exc: object) -> None:
        with _FD2_LOCK:
            self._end()

    def _end(self) -> None:
        if self._restore is None:
            return
        if self in _HOSTS:
            _HOSTS.remove(self)
        try:
            sys.stderr.flush()
        except (OSError, ValueError, AttributeError):
            pass
        try:
            self.sync()
        finally:  # also on a Ctrl-C during the wait: fd 2 must come back
            os.dup2(self._restore, 2)  # our pipe's writer in fd 2 closes: the reader sees the end
            os.close(self._restore)
            self._restore = None
        if self._thread is not None:
            self._thread.join(timeout=0.2)  # a child process may still hold the pipe: do not wait for it


class ChatterFilter(Fd2Pipe):
    """``with ChatterFilter():`` (``--plain``) audio-library lines are dropped, the rest is passed on at once,
    in order. At the end the count, if any, is said in one line."""

    thread_name = "va-stderr-filter"

    def __init__(self) -> None:
        super().__init__()
        self.dropped = 0

    def __enter__(self) -> ChatterFilter:
        if not _debug():
            super().__enter__()
        return self

    def _line(self, raw: bytes) -> None:
        if is_chatter(raw):
            self.dropped += 1
            log.debug("audio library: %s", raw.decode(errors="replace").rstrip())
            return
        glued = _CHATTER_GLUED.search(raw)
        if glued:  # the start is another thread's line (its newline follows later): keep that part only
            self.dropped += 1
            log.debug("audio library: %s", raw[glued.start() :].decode(errors="replace").rstrip())
            raw = raw[: glued.start()]
        self._forward(raw)

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        if self.dropped:
            print(
                f"voiceassist: note: {self.dropped} message(s) of the audio libraries (ALSA/PortAudio) were hidden; "
                f"{ENV}=1 shows them",
                file=sys.stderr,
            )


class QuietDecoders(Fd2Pipe):
    """``with QuietDecoders():`` around a call into a decoder whose failure we report ourselves in one line:
    the decoder's own lines are dropped (debug log), every other line written meanwhile is passed on, in order.

    Inside a long-lived filter (``--plain``, the full-screen UI) that filter does the dropping while the
    window is open (fd 2 is not touched: no line can overtake another); otherwise fd 2 goes into a pipe of
    its own for the call."""

    thread_name = "va-stderr-quiet"
    host = False

    def __init__(self) -> None:
        super().__init__()
        self.quiet = 1
        self._host: Fd2Pipe | None = None

    def __enter__(self) -> QuietDecoders:
        _FD2_LOCK.acquire()  # held for the call (short): two threads' windows must not interleave their restores
        try:
            host = _HOSTS[-1] if _HOSTS else None
            if host is not None and host._ours():
                host.quiet += 1
                self._host = host
            else:
                self._begin()
        except BaseException:
            _FD2_LOCK.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            host, self._host = self._host, None
            if host is not None:
                try:
                    host.sync()  # every line written during the call was judged while quiet
                finally:
                    host.quiet -= 1
            else:
                self._end()
        finally:
            _FD2_LOCK.release()
