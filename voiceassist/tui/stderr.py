"""Keep library messages off the full screen: while the UI runs, file descriptor 2 goes into a pipe.

C libraries (ALSA, PortAudio, PulseAudio) and Python warnings write to stderr directly. On a full-screen UI
that text lands at the cursor, scrolls the terminal and leaves the screen garbled: prompt_toolkit only redraws
what it thinks changed. So fd 2 is redirected to a pipe (``audio.chatter.Fd2Pipe``, the one implementation
also behind ``--plain``'s filter); each line becomes a note for the conversation pane (control sequences
stripped when shown; repeats and floods cut), and fd 2 is restored on exit.
"""

from __future__ import annotations

from collections.abc import Callable

from voiceassist.audio.chatter import Fd2Pipe

MAX_LINES = 40  # lines shown per run; after that one note says the rest was dropped
MAX_LINE_CHARS = 300  # a longer line is cut, characters


class StderrCapture(Fd2Pipe):
    """``with StderrCapture(on_line):`` runs ``on_line(text)`` (from a reader thread) for each stderr line."""

    thread_name = "tui-stderr"

    def __init__(self, on_line: Callable[[str], None]) -> None:
        super().__init__()
        self.on_line = on_line
        self._shown = 0
        self._last = ""

    def __enter__(self) -> StderrCapture:
        super().__enter__()
        return self

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
