"""The full-screen terminal UI: conversation pane, hint line, two-line status bar, input line.

It never blocks: a background task on prompt_toolkit's event loop drains ``app.events`` (without waiting) and
asks for a redraw; commands go to the app through its non-blocking methods. Slow work a command starts
(/save writing WAVs, /devices asking PortAudio) runs in a helper thread that reports back through
``_notes``. Push-to-talk lives in :class:`PushToTalk`; what is drawn lives in ``view``.
"""

from __future__ import annotations

import asyncio
import gc
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from prompt_toolkit.application import Application
from prompt_toolkit.buffer import Buffer
from prompt_toolkit.filters import Condition, has_completions
from prompt_toolkit.formatted_text import StyleAndTextTuples
from prompt_toolkit.history import InMemoryHistory
from prompt_toolkit.key_binding import KeyBindings
from prompt_toolkit.key_binding.bindings.completion import generate_completions
from prompt_toolkit.layout import Float, FloatContainer, HSplit, Layout, UIContent, UIControl, Window
from prompt_toolkit.layout.controls import BufferControl, FormattedTextControl
from prompt_toolkit.layout.menus import CompletionsMenu
from prompt_toolkit.layout.processors import AfterInput, BeforeInput, ConditionalProcessor
from prompt_toolkit.styles import Style

from voiceassist import events as ev
from voiceassist.config import Config
from voiceassist.errors import ConfigError, VoiceAssistError
from voiceassist.events import AssistantState
from voiceassist.tui import commands as cmds
from voiceassist.tui.statusbar import StatusModel
from voiceassist.tui.stderr import StderrCapture
from voiceassist.tui.view import Conversation, plain_text, safe

STYLE = Style.from_dict(
    {
        "you": "bold ansicyan",
        "bot": "bold ansigreen",
        "audio": "ansicyan",
        "spark": "ansiyellow",
        "cut": "ansired",
        "figures": "ansibrightblack",
        "note": "ansibrightblack",
        "error": "ansired bold",
        "help": "",
        "hint": "ansibrightblack",
        "pending": "ansibrightblack italic",
        "hint.scroll": "reverse",
        "status": "bg:ansiblue ansiwhite",
        "status.mode": "bg:ansiwhite ansiblack bold",
        "status.state": "bg:ansiblue ansiwhite bold",
        "status.rec": "bg:ansired ansiwhite bold blink",
        "status.warn": "bg:ansiyellow ansiblack bold",
        "status.figures": "bg:ansiblue ansiwhite",
        "status.tiny": "bg:ansimagenta ansiwhite bold",
        "status.info": "bg:ansiblack ansiwhite",
        "prompt": "bold",
        "placeholder": "ansibrightblack",
    }
)
PUMP_INTERVAL_S = 0.04  # how often the event queue is drained and the screen redrawn at most (25 fps)
MAX_EVENTS_PER_TICK = 2000  # events handled per drain, so a flood of tokens cannot starve the keyboard
METER_REDRAW_S = 0.1  # the level meter alone redraws the screen at most 10 times a second
HINT_S = 10.0  # a hint (command feedback, app detail) stays this long on the hint line, s
DOUBLE_CTRL_C_S = 1.5  # a second Ctrl-C this soon after a cancel quits, even if the reply has not stopped


def is_tiny_model(config: Config, description: str) -> bool:
    """True for the random-weight demo model, so the screen can say its replies are noise."""
    name = config.model.name
    if name == "tiny" or "tiny" in description.lower():
        return True
    readme = Path(os.path.expanduser(name)) / "README.md"
    try:
        return readme.is_file() and "tiny Qwen2-Audio" in readme.read_text(encoding="utf-8")[:200]
    except OSError:
        return False


class PushToTalk:
    """Press to start, press again to stop; or hold the key. A terminal only sends key presses, auto-repeated
    while the key is held (after a delay of typically 250-660 ms, then every 30-80 ms), never a release. So:
    a press while recording is a stop unless another press follows within ``REPEAT_WINDOW_S`` (then the key
    is being held); a held recording ends when the repeats stop for ``release_s``."""

    REPEAT_WINDOW_S = 0.25  # presses closer than this are auto-repeats of one held key, s

    def __init__(self, app: Any, release_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.app, self.release_s, self.clock = app, release_s, clock
        self.window_s = min(self.REPEAT_WINDOW_S, release_s)
        self.since: float | None = None  # recording start, clock seconds; None when not recording
        self.last_press = 0.0  # clock seconds
        self.held = False  # auto-repeats seen: the key is being held
        self.stop_at: float | None = None  # a lone second press stops the recording here unless repeats follow

    @property
    def recording(self) -> bool:
        return self.since is not None

    def press(self) -> None:
        now = self.clock()
        if self.since is None:
            self.app.ptt_press()
            self.since, self.last_press, self.held, self.stop_at = now, now, False, None
        elif self.held or (self.stop_at is not None and now - self.last_press <= self.window_s):
            self.held, self.stop_at, self.last_press = True, None, now  # auto-repeat of the held key
        else:
            self.stop_at, self.last_press = now + self.window_s, now  # toggle off, unless repeats follow

    def tick(self) -> bool:
        """Called often; ends the recording when a toggle-off press stood alone or a hold's repeats stopped.
        True if it ended one."""
        now = self.clock()
        if self.since is not None and not self.app.ptt_held:
            # The app ended the recording itself (the length limit, mute, a mode change): no release to send,
            # and the next press starts a new recording rather than stopping this one.
            self.since, self.held, self.stop_at = None, False, None
            return True
        if self.since is not None and (
            (self.stop_at is not None and now >= self.stop_at) or (self.held and now - self.last_press > self.release_s)
        ):
            self.stop()
            return True
        return False

    def stop(self) -> None:
        if self.since is not None:
            self.since, self.held, self.stop_at = None, False, None
            self.app.ptt_release()


class ConversationControl(UIControl):
    """Draws exactly the pane's rows: the end of the history, or ``offset`` rows above it."""

    def __init__(self, ui: Tui) -> None:
        self.ui = ui

    def is_focusable(self) -> bool:
        return False

    def create_content(self, width: int, height: int) -> UIContent:
        grown = self.ui.conv.growth(width)
        if self.ui.offset:
            self.ui.offset += max(grown, 0)  # scrolled back: the text being read stays still as lines arrive
        lines, self.ui.offset = self.ui.conv.window(width, height, self.ui.offset)
        self.ui.pane_height = height
        return UIContent(
            get_line=lambda i: cast(StyleAndTextTuples, lines[i]), line_count=len(lines), show_cursor=False
        )


class Tui:
    """One screen over one App."""

    def __init__(self, app: Any, config: Config) -> None:
        self.app, self.config = app, config
        backend = getattr(app, "backend", None)
        description = safe(str(getattr(backend, "description", "") or config.model.name))
        source = getattr(app, "source", None)
        self.conv = Conversation(cap_s=config.vad.max_chunk_s)
        self.status = StatusModel(
            mode=config.ui.mode,
            silence_warning_s=config.audio.silence_warning_s,
            model=description,
            device=safe(str(getattr(source, "name", "") or "")),
            tiny=is_tiny_model(config, description),
            tts=config.tts.enabled,
        )
        self.ptt = PushToTalk(app, config.ui.ptt_release_ms / 1000)
        self.offset = 0  # rows scrolled up from the bottom; 0 follows new text
        self.pane_height = 20  # rows of the conversation pane at the last draw
        self.exit_code = 0
        self.ended_by_input = False  # the app said the input ended and the last reply is done
        self._hint = ("", 0.0)  # the hint on show and since when (time.monotonic())
        self._last_cancel = 0.0  # time.monotonic() of the last Ctrl-C that cancelled a reply
        self._cancelled_turn: int | None = None  # the turn that Ctrl-C cancelled
        self.streaming_turn: int | None = None  # the turn whose reply is streaming, if any
        # Producer: helper threads (/save, /devices); consumer: the pump task. Bounded: a note per command.
        self._notes: queue.Queue[tuple[str, str]] = queue.Queue(maxsize=100)
        self.buffer = Buffer(
            multiline=False,
            completer=cmds.CommandCompleter(),
            complete_while_typing=False,
            history=InMemoryHistory(),
            accept_handler=self._accept,
        )
        self.application = self._build()
        self.conv.note("voiceassist: speak, or type a message and press Enter; /help lists the commands")
        if self.status.tiny:
            self.conv.note(
                "this is the tiny random-weight demo model: its replies are noise, but every part of "
                "the pipeline is real",
                "error",
            )

    # ---- layout and keys -------------------------------------------------------------------------------------

    def _build(self) -> Application:
        placeholder = ConditionalProcessor(
            AfterInput(self._placeholder, style="class:placeholder"), filter=Condition(lambda: not self.buffer.text)
        )
        input_window = Window(
            BufferControl(self.buffer, input_processors=[BeforeInput("› ", style="class:prompt"), placeholder]),
            height=1,
        )
        body = HSplit(
            [
                Window(ConversationControl(self), wrap_lines=False),
                Window(FormattedTextControl(lambda: cast(StyleAndTextTuples, self._hint_line())), height=1),
                Window(
                    FormattedTextControl(lambda: cast(StyleAndTextTuples, self.status.line1(self._width(), ev.now()))),
                    height=1,
                    style="class:status",
                ),
                Window(
                    FormattedTextControl(lambda: cast(StyleAndTextTuples, self.status.line2(self._width()))),
                    height=1,
                    style="class:status",
                ),
                input_window,
            ]
        )
        root = FloatContainer(
            body, floats=[Float(xcursor=True, ycursor=True, content=CompletionsMenu(max_height=8, scroll_offset=1))]
        )
        layout = Layout(root, focused_element=input_window)
        return Application(
            layout=layout,
            key_bindings=self._keys(),
            style=STYLE,
            full_screen=True,
            mouse_support=False,
            erase_when_done=True,
            enable_page_navigation_bindings=False,
        )  # PageUp/PageDown scroll our pane

    def _width(self) -> int:
        try:
            return self.application.output.get_size().columns
        except Exception:  # noqa: BLE001 - no terminal size (tests)
            return 80

    def _placeholder(self) -> str:
        if self.status.mode == "ptt":
            return f"press {self.config.ui.ptt_key} to talk (hold it, or press again to stop), or type"
        if self.config.wake.word:
            word = self.config.wake.word.replace("_", " ")
            return f"say the wake word ({word}) then speak ({self.config.ui.ptt_key} stops a reply), or type"
        return "speak, or type a message · /help"

    def _hint_line(self) -> list[tuple[str, str]]:
        if self.offset:
            return [("class:hint.scroll", f" ↓ {self.offset} more lines below: PageDown to follow ")]
        if self.status.hint:
            return [("class:hint", " " + self.status.hint)]
        return [("class:hint", " Enter send · Tab complete · PgUp/PgDn scroll · Ctrl-C cancel/quit · /help")]

    def _keys(self) -> KeyBindings:
        kb = KeyBindings()
        empty = Condition(lambda: not self.buffer.text)
        ptt_on = Condition(lambda: self.status.mode == "ptt")
        try:

            @kb.add(self.config.ui.ptt_key, filter=empty & ptt_on & ~has_completions)
            def _ptt(event: Any) -> None:
                if self.status.muted and not self.ptt.recording:
                    self.status.hint = "the microphone is muted: /mute to listen again"
                    return
                self.ptt.press()
                self.application.invalidate()
        except ValueError:
            raise ConfigError(
                f"[ui] ptt_key = {self.config.ui.ptt_key!r} is not a key name; use e.g. space,"
                " f5 or c-t (prompt_toolkit key names)"
            ) from None

        # Hands-free with a wake word: the key on an empty line stops a reply and stands in for the wake word.
        wake_key = Condition(lambda: self.status.mode != "ptt" and bool(self.config.wake.word))
        try:

            @kb.add(self.config.ui.ptt_key, filter=empty & wake_key & ~has_completions)
            def _wake_key(event: Any) -> None:
                self.app.ptt_press()
        except ValueError:
            pass  # a bad key name was reported above

        @kb.add("c-c")
        def _ctrl_c(event: Any) -> None:
            now = time.monotonic()
            if self.ptt.recording:
                self.ptt.stop()
            elif self._busy() and not (
                now - self._last_cancel < DOUBLE_CTRL_C_S and self._cancelled_turn == self.streaming_turn
            ):
                # (A second Ctrl-C while the same reply still streams falls through: the user wants out.)
                self._last_cancel, self._cancelled_turn = now, self.streaming_turn
                self.app.cancel()
                self.status.hint = "cancelling the reply (Ctrl-C again to quit)"
            elif self.buffer.text:
                self.buffer.reset()
            else:
                self.quit()

        @kb.add("c-d")
        def _ctrl_d(event: Any) -> None:
            if self.buffer.text:
                self.buffer.delete()
            else:
                self.quit()

        @kb.add("pageup")
        def _up(event: Any) -> None:
            self.offset += max(1, self.pane_height - 2)

        @kb.add("pagedown")
        def _down(event: Any) -> None:
            self.offset = max(0, self.offset - max(1, self.pane_height - 2))

        @kb.add("c-l")
        def _redraw(event: Any) -> None:
            event.app.renderer.clear()

        kb.add("tab")(generate_completions)

        @kb.add("s-tab", filter=has_completions)
        def _prev(event: Any) -> None:
            self.buffer.complete_previous()

        return kb

    def _busy(self) -> bool:
        busy = getattr(self.app, "busy", None)  # the app knows best whether a reply is being generated
        if isinstance(busy, bool):
            return busy or self.status.state == AssistantState.SPEAKING
        return self.status.busy or self.status.state in (AssistantState.THINKING, AssistantState.SPEAKING)

    # ---- input line ------------------------------------------------------------------------------------------

    def _accept(self, buffer: Buffer) -> bool:
        text = buffer.text.strip()
        self.status.hint = ""
        if not text:
            return False
        if cmds.is_command(text):
            try:
                self.run_command(cmds.parse(text))
            except cmds.CommandError as err:
                self.status.hint = str(err)
            except VoiceAssistError as err:
                self.conv.note(str(err), "error")
        else:
            self.offset = 0  # a new turn: follow it
            text = cmds.message_text(text)
            self.conv.pending(text)
            self.app.submit_text(text)
        return False  # clear the line (it stays in the Up-arrow history)

    def run_command(self, c: cmds.Parsed) -> None:
        name, args = c.name, c.args
        if name == "help":
            self.conv.note("\n".join(cmds.help_lines()), "help", hang=cmds.HELP_COLUMN)
            self.conv.note(cmds.KEYS_HELP, "help")
        elif name == "quit":
            self.quit()
        elif name == "reset":
            self.app.reset()
            self.conv.drop_pending()
            self.conv.note("──── new conversation: the model no longer sees the turns above ────")
        elif name == "mode":
            if not args:
                self.status.hint = f"mode is {self.status.mode}; /mode handsfree|ptt"
                return
            if args[0] != "ptt":
                self.ptt.stop()
            self.app.set_mode(args[0])
            self.status.mode = args[0]
            self.status.hint = (
                "push-to-talk: press " + self.config.ui.ptt_key + " on an empty line to talk"
                if args[0] == "ptt"
                else "hands-free: just speak"
            )
        elif name == "mute":
            muted = (not self.status.muted) if not args else args[0] == "on"
            self.app.set_muted(muted)
            self.status.muted = muted
            self.status.hint = "microphone muted (/mute again to listen)" if muted else "listening again"
        elif name == "tts":
            on = (not self.status.tts) if not args else args[0] == "on"
            self.app.set_tts(on)
            self.status.tts = on
            self.status.hint = "replies are spoken" if on else "replies are not spoken"
        elif name == "file":
            path = os.path.expanduser(args[0])
            if not os.path.isfile(path):
                raise cmds.CommandError(f"/file: {args[0]} is not a file; check the path (Tab completes)")
            self.offset = 0
            self.conv.pending(" ".join(args[1:]).strip(), file=os.path.basename(path))
            self.app.submit_file(path, " ".join(args[1:]))
        elif name == "save":
            self._in_background(lambda: self._save(args[0] if args else None), "saving the transcript…")
        elif name == "devices":
            from voiceassist.audio.devices import describe_devices

            self._in_background(lambda: (describe_devices(), "note"), "listing devices…")

    def _save(self, dest: str | None) -> tuple[str, str]:
        from voiceassist.transcript import save_transcript

        history = self.app.history()
        if not history:
            return "nothing to save yet: no turns so far", "note"
        saved = save_transcript(history, dest, meta={"model": self.status.model})
        return (
            f"saved {len(history)} turns: {saved.markdown}, {saved.json.name}, "
            f"{len(saved.clips)} audio clips" + (f" in {saved.clips[0].parent}" if saved.clips else ""),
            "note",
        )

    def _in_background(self, work: Callable[[], tuple[str, str]], hint: str) -> None:
        self.status.hint = hint

        def run() -> None:
            try:
                result = work()
            except VoiceAssistError as err:
                result = (str(err), "error")
            except Exception as err:  # noqa: BLE001 - the edge: a one-line message, never a traceback
                result = (f"{type(err).__name__}: {err}", "error")
            try:
                self._notes.put(result, timeout=1)
            except queue.Full:
                pass

        threading.Thread(target=run, name="tui-command", daemon=True).start()

    def quit(self, code: int = 0) -> None:
        self.exit_code = code
        if self.application.is_running and not self.application.future.done():  # type: ignore[union-attr]
            self.application.exit(result=code)

    # ---- the event pump --------------------------------------------------------------------------------------

    def handle(self, event: ev.Event) -> bool:
        """Apply one app event to the pane and the status bar; True if the screen changed."""
        changed = self.status.apply(event)
        if not isinstance(event, (ev.Level, ev.Status)):
            changed = self.conv.apply(event) or changed
            if isinstance(event, (ev.ReplyStart, ev.Token)):
                self.streaming_turn = event.turn
            elif isinstance(event, ev.ReplyDone):
                self.streaming_turn = None
                if self.status.hint.startswith("cancelling"):
                    self.status.hint = ""
        return changed

    async def pump(self) -> None:
        """Drain the app's events without ever blocking, and redraw when something changed."""
        events = self.app.events
        done = getattr(self.app, "done", None)
        last_draw = 0.0
        while True:
            changed = meter = False
            for _ in range(MAX_EVENTS_PER_TICK):
                try:
                    event = events.get_nowait()
                except queue.Empty:
                    break
                if isinstance(event, ev.Level):  # the meter: redrawn at most METER_REDRAW_S apart
                    self.status.apply(event)
                    meter = True
                    continue
                try:
                    changed = self.handle(event) or changed
                except Exception as err:  # noqa: BLE001 - one bad event must not freeze the screen
                    self.conv.note(f"cannot display a {event.kind} event: {type(err).__name__}: {err}", "error")
                    changed = True
            while True:
                try:
                    text, style = self._notes.get_nowait()
                except queue.Empty:
                    break
                self.conv.note(text, style)
                if not text.startswith("stderr: "):
                    self.status.hint = ""  # the command's result is here: its "working…" hint goes
                changed = True
            if self.status.hint != self._hint[0]:
                self._hint = (self.status.hint, time.monotonic())
            elif self.status.hint and time.monotonic() - self._hint[1] > HINT_S:
                self.status.hint, changed = "", True  # hints are transient; the key help comes back
            changed = self.ptt.tick() or self.ptt.recording or changed
            self.status.recording_since = self.ptt.since  # same clock as ev.now(): time.monotonic
            if changed or (meter and time.monotonic() - last_draw >= METER_REDRAW_S):
                last_draw = time.monotonic()
                self.application.invalidate()
            if done is not None and done.is_set() and events.empty():
                self.ended_by_input = True
                self.quit(0)
                return
            await asyncio.sleep(PUMP_INTERVAL_S)

    def run(self) -> int:
        def pre_run() -> None:
            self.application.create_background_task(self.pump())

        def on_stderr(line: str) -> None:
            try:
                self._notes.put_nowait((f"stderr: {line}", "note"))
            except queue.Full:
                pass

        with StderrCapture(on_stderr):  # library messages must not scribble over the full screen
            result = self.application.run(pre_run=pre_run)
        if self.ended_by_input:
            # The input ended and the last reply is done (no --stay): the full screen is gone, so leave the
            # conversation in the terminal as plain text for the user to read.
            width = shutil.get_terminal_size().columns
            print(plain_text(self.conv.bottom_lines(width, 10**9)[0]).rstrip())
        return int(result if result is not None else self.exit_code)


def run(app: Any, config: Config) -> int:
    """Run the full-screen UI over ``app`` until the user quits (or the input ended, unless --stay); stops the
    app (input, model, output, in that order) before returning the exit status."""
    ui = Tui(app, config)
    try:
        code = ui.run()
    finally:
        app.stop(timeout=2.0)
        # The process exits next. Its last garbage collections walk every object the model libraries made
        # (~3000 modules): 0.5-3 s on a busy CPU after the screen is gone. Collect the garbage there is now
        # (so extension objects in cycles are freed, not reported as leaks), then freeze the rest: frozen
        # objects are skipped at exit, so "quit" means quit; memory goes back to the OS with the process.
        gc.collect()
        gc.freeze()
    return code
