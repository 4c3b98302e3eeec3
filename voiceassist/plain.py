"""Two front ends over the App's event stream that are not full screen.

- ``--plain``: one human-readable line per event; a reply streams on its own line as its tokens arrive and
  its figures follow on the next line. Repeated states and the level meter are not printed.
- ``--events PATH|-``: JSON lines, one per event (``Event.to_json()``: ``type``, ``t`` on the capture clock
  and the event's fields), every type except ``level``. Written by :class:`EventsWriter`, which the App calls
  as an event sink, so the JSON is complete whatever front end runs alongside.

With ``--events -`` the JSON owns stdout and the human lines go to stderr.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
from typing import Any, TextIO

from voiceassist import slash
from voiceassist.errors import ConfigError, OutputError
from voiceassist.events import (
    AssistantState,
    ErrorEvent,
    Event,
    Interrupted,
    Level,
    ReplyDone,
    ReplyStart,
    Status,
    Token,
    UtteranceEvent,
    Wake,
)
from voiceassist.textsafe import strip_controls

POLL_S = 0.1  # how often the pump looks at app.done, s


class EventsWriter:
    """JSON lines to a file (replaced) or ``-`` (stdout); thread-safe, flushed per line.

    A write that fails (disk full, an I/O error; #16) is said once on stderr and the writer stops writing:
    the assistant goes on, and ``failed`` (the one-line reason) makes the command end with OutputError's exit
    code. A reader that went away (broken pipe on stdout) is not a failure."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.failed = ""  # why writing events failed, "" while it works
        self.missed = 0  # events not written since it failed (the one that failed included)
        self._lock = threading.Lock()
        if path == "-":
            self._out: TextIO = sys.stdout
            self._own = False
        else:
            try:
                self._out = open(path, "w", encoding="utf-8")
            except OSError as err:
                raise ConfigError(
                    f"--events {path}: cannot write there ({err.strerror}); give a writable file path or - for stdout"
                ) from None
            self._own = True

    def __call__(self, event: Event) -> None:
        if isinstance(event, Level):
            return
        line = json.dumps(event.to_json(), ensure_ascii=False)
        with self._lock:
            if self.failed:  # before the closed check: a failed file is closed, and its events still count
                self.missed += 1
                return
            if self._out.closed:
                return
            try:
                self._out.write(line + "\n")
                self._out.flush()
            except (BrokenPipeError, ValueError):
                pass  # the reader went away; the assistant goes on
            except OSError as err:
                self._fail(err)

    def _fail(self, err: OSError) -> None:
        self.missed += 1
        self.failed = f"--events {self.path}: writing failed ({err.strerror or err}); events after that are missing"
        print(f"voiceassist: error: {self.failed}; the assistant goes on", file=sys.stderr, flush=True)
        if self._own:
            self._discard()

    def _discard(self) -> None:
        """Close the file without flushing again: the buffered line that failed would only fail again (and
        raise at exit, which printed a traceback)."""
        try:
            os.close(self._out.fileno())
        except (OSError, ValueError):
            pass
        try:
            self._out.close()  # its fd is gone: the flush inside fails; what matters is that it is closed
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        """Close the file (a failure to write its last lines is reported like any other)."""
        with self._lock:
            if self._own and not self._out.closed:
                try:
                    self._out.close()
                except OSError as err:
                    self._fail(err)

    def check(self) -> None:
        """OutputError when events could not all be written: the command ends with its exit code (8)."""
        if self.failed:
            raise OutputError(f"{self.failed} ({self.missed} events not written)")


def _ms(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds * 1000:.0f} ms"


class PlainPrinter:
    """Formats events as lines on ``out``."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self._state = ""
        self._reply_open = False  # a reply's line is being written (no newline yet)

    def _line(self, text: str) -> None:
        if self._reply_open:
            self.out.write("\n")
            self._reply_open = False
        self.out.write(text + "\n")
        self.out.flush()

    def handle(self, ev: Event) -> None:
        if isinstance(ev, Level):
            return
        if isinstance(ev, Token):
            if not self._reply_open:
                self.out.write("  … ")
                self._reply_open = True
            self.out.write(ev.text)
            self.out.flush()
        elif isinstance(ev, UtteranceEvent):
            self._line(f"you #{ev.turn}: {describe_turn(ev)}")
        elif isinstance(ev, ReplyStart):
            when = (
                f"{_ms(ev.latency_s)} after end of speech"
                if ev.latency_s is not None
                else f"first token {_ms(ev.ttft_s)}"
            )
            self._line(f"assistant #{ev.turn} ({when}):")
            self.out.write("  ")
            self._reply_open = True
        elif isinstance(ev, ReplyDone):
            figures = [f"{ev.n_tokens} tokens", f"{ev.tok_per_s:.1f} tok/s", f"first token {_ms(ev.ttft_s)}"]
            if ev.latency_s is not None:
                figures.append(f"end of speech → first token {_ms(ev.latency_s)}")
            if ev.voice_latency_s is not None:
                figures.append(f"→ first sound {_ms(ev.voice_latency_s)}")
            if ev.context_tokens:
                figures.append(f"context {ev.context_tokens} tokens")
            if ev.interrupted:
                figures.append("interrupted")
            self._line("  [" + " · ".join(figures) + "]")
        elif isinstance(ev, Interrupted):
            kept = f"; kept {len(ev.kept_text)} characters" if ev.kept_text else ""
            self._line(f"  [reply {ev.turn} interrupted ({ev.reason.replace('_', '-')}){kept}]")
        elif isinstance(ev, ErrorEvent):
            where = f" ({ev.source})" if ev.source else ""
            self._line(f"error{where}: {strip_controls(ev.message)}")
        elif isinstance(ev, Status):
            if ev.state == self._state and (not ev.detail or ev.state == AssistantState.RECORDING):
                return
            self._state = ev.state
            detail = f": {strip_controls(ev.detail)}" if ev.detail else ""
            waiting = ev.state == AssistantState.WAITING_FOR_WAKE
            label = "waiting for wake word" if waiting else ev.state.replace("_", " ")
            self._line(f"-- {label}{detail}")
        elif isinstance(ev, Wake):
            what = "stop" if ev.action == "stop" else "listening"
            self._line(f"-- wake word: {strip_controls(ev.word)} ({ev.probability:.2f}), {what}")


def describe_turn(ev: UtteranceEvent) -> str:
    """``[audio 3.6 s] (cut at 30 s) "typed text"`` for one user turn."""
    parts = []
    if getattr(ev, "file", ""):
        parts.append(f"[file {strip_controls(ev.file)}]")
    parts += [f"[audio {d:.1f} s]" for d in ev.durations]
    if ev.capped:
        parts.append("(cut at 30 s)")
    if ev.text:
        parts.append(json.dumps(strip_controls(ev.text), ensure_ascii=False))
    return " ".join(parts) or "(empty)"


def stdin_has_input() -> bool:
    """Typed lines are read from a terminal, and also from a pipe or a file (#16: piped input was ignored
    without a word); not from /dev/null or another device (a service, a test harness)."""
    try:
        if sys.stdin is None or sys.stdin.closed:
            return False
        if sys.stdin.isatty():
            return True
        import stat

        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (OSError, ValueError):
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISREG(mode) or stat.S_ISSOCK(mode)


def _read_commands(app: Any, quit_flag: threading.Event) -> None:
    """Typed lines (a terminal, a pipe or a file): text turns and the slash commands (the TUI's parser,
    ``voiceassist.slash``). The end of a terminal's input (Ctrl-D) quits; the end of a pipe or file only ends the
    reading: the turns it gave are answered, and the assistant goes on with its audio input."""
    tty = sys.stdin.isatty()
    for line in sys.stdin:
        if not line.strip():
            continue
        if not slash.is_command(line):
            app.submit_text(slash.message_text(line))
            continue
        try:
            if not _run_command(app, slash.parse(line)):
                break
        except Exception as err:  # noqa: BLE001 - a bad command is one line, never the end of the session
            print(f"error: {strip_controls(str(err))}", file=sys.stderr)
    else:
        if not tty:
            return  # end of a pipe/file: nothing more to read, nothing to quit for
    quit_flag.set()


def _run_command(app: Any, c: slash.Parsed) -> bool:
    """Run one command in plain mode; False for /quit."""
    name, args = c.name, c.args
    match name:
        case "quit":
            return False
        case "help":
            print("\n".join(slash.help_lines()), file=sys.stderr)
        case "reset":
            app.reset()
        case "mute":
            app.set_muted(not app.muted if not args else args[0] == "on")
        case "tts":
            app.set_tts(not app.tts_on if not args else args[0] == "on")
        case "mode":
            if args:
                app.set_mode(args[0])
            else:
                print(f"mode is {app.mode}; /mode handsfree|ptt", file=sys.stderr)
        case "file":
            app.submit_file(args[0], " ".join(args[1:]))
        case _:
            print(f"/{name} is for the full-screen UI; type /help for the list", file=sys.stderr)
    return True


def run(app: Any, out: TextIO | None = None, read_stdin: bool = False) -> int:
    """Print the started ``app``'s events until it is done (or the user quits); stops the app; returns 0.

    Ctrl-C cancels the reply in progress; on an idle assistant it quits.
    """
    printer = PlainPrinter(out or sys.stdout)
    printer._line(f"voiceassist · {strip_controls(app.description)} · mode {app.mode}")
    quit_flag = threading.Event()
    if read_stdin:
        if not sys.stdin.isatty():
            printer._line("-- reading typed turns and /commands from standard input (one per line)")
        threading.Thread(target=_read_commands, args=(app, quit_flag), name="va-plain-stdin", daemon=True).start()
    while True:
        try:
            _pump(app, printer, quit_flag)
            break
        except KeyboardInterrupt:
            if app.busy:
                app.cancel()
                continue
            break
    app.stop()
    while True:  # what the stop flushed out (the last statuses)
        try:
            printer.handle(app.events.get_nowait())
        except queue.Empty:
            break
    return 0


def _pump(app: Any, printer: PlainPrinter, quit_flag: threading.Event) -> None:
    while not quit_flag.is_set():
        try:
            ev = app.events.get(timeout=POLL_S)
        except queue.Empty:
            if app.done.is_set() and app.events.empty():
                return
            continue
        printer.handle(ev)
