"""Keep library messages off the full screen: while the UI runs, file descriptor 2 goes into a pipe.

C libraries (ALSA, PortAudio, PulseAudio) and Python warnings write to stderr directly. On a full-screen UI
that text lands at the cursor, scrolls the terminal and leaves the screen garbled: prompt_toolkit only redraws
what it thinks changed. So fd 2 is redirected to a pipe; a reader thread turns each line into a note for the
conversation pane (control sequences stripped; repeats and floods cut), and fd 2 is restored on exit.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable

MAX_LINES = 40  # lines shown per run; after that one note says the rest was dropped
MAX_LINE_CHARS = 300  # a longer line is cut, characters


class StderrCapture:
    """``with StderrCapture(on_line):`` runs ``on_line(text)`` (from a reader thread) for each stderr line."""

    def __init__(self, on_line: Callable[[str], None]) -> None:
        self.on_line = on_line
        self._saved: int | None = None
        self._thread: threading.Thread | None = None
        self._shown = 0
        self._last = ""

    def __enter__(self) -> StderrCapture:
        try:
            sys.stderr.flush()
            read_fd, write_fd = os.pipe()
            self._saved = os.dup(2)
            os.dup2(write_fd, 2)
            os.close(write_fd)
        except OSError:
            self._saved = None  # no fd 2 to take over: nothing to protect the screen from
            return self
        self._thread = threading.Thread(target=self._read, args=(read_fd,), name="tui-stderr", daemon=True)
        self._thread.start()
        return self

    def _read(self, fd: int) -> None:
        with os.fdopen(fd, "rb", buffering=0) as pipe:
            pending = b""
            while True:
                try:
                    data = pipe.read(4096)
                except OSError:
                    return
                if not data:  # every writer closed: fd 2 was restored
                    if pending:
                        self._line(pending)
                    return
                pending += data
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    self._line(raw)
                if len(pending) > MAX_LINE_CHARS * 4:
                    self._line(pending)
                    pending = b""

    def _line(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").strip()[:MAX_LINE_CHARS]
        if not text or text == self._last:
            return
        self._last = text
        self._shown += 1
        if self._shown <= MAX_LINES:
            self.on_line(text)
        elif self._shown == MAX_LINES + 1:
            self.on_line(f"(more library messages on stderr were dropped after {MAX_LINES} lines)")

    def __exit__(self, *exc: object) -> None:
        if self._saved is None:
            return
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(self._saved, 2)  # closes the pipe's last writer: the reader sees the end and returns
        os.close(self._saved)
        self._saved = None
        if self._thread is not None:
            self._thread.join(timeout=0.2)  # a child process may still hold the pipe: do not wait for it
