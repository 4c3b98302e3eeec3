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
import queue
import sys
import threading
from typing import Any, TextIO

from voiceassist import slash
from voiceassist.errors import ConfigError
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
)
from voiceassist.textsafe import strip_controls

POLL_S = 0.1  # how often the pump looks at app.done, s


class EventsWriter:
    """JSON lines to a file (replaced) or ``-`` (stdout); thread-safe, flushed per line."""

    def __init__(self, path: str) -> None:
        self.path = path
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
            if self._out.closed:
                return
            try:
                self._out.write(line + "\n")
                self._out.flush()
            except (BrokenPipeError, ValueError):
                pass  # the reader went away; the assistant goes on

    def close(self) -> None:
        with self._lock:
            if self._own and not self._out.closed:
                self._out.close()


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
            self._line(f"-- {ev.state.replace('_', ' ')}{detail}")


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


def _read_commands(app: Any, quit_flag: threading.Event) -> None:
    """Typed lines on a terminal: text turns and the slash commands (the TUI's parser, ``voiceassist.slash``)."""
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
            print(f"error: {err}", file=sys.stderr)
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
