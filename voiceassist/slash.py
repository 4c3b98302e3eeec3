"""The slash commands of the input line, for the TUI and plain mode alike: their table, parsing and help.

One parser, so a command means the same in both front ends; each front end runs the commands it can (plain
mode has no transcript pane to /save into, so it says so). No prompt_toolkit here: plain mode must not need it.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    name: str  # without the slash
    usage: str  # arguments, as shown in /help
    doc: str
    choices: tuple[str, ...] = ()  # values of the first argument, for completion
    path_arg: bool = False  # the first argument is a file path


COMMANDS: tuple[Command, ...] = (
    Command("help", "", "this list"),
    Command("reset", "", "start a new conversation"),
    Command(
        "save",
        "[PATH]",
        "save the transcript (Markdown + JSON) and your audio clips (WAV) to a folder, or to NAME.md + NAME.json",
        path_arg=True,
    ),
    Command("mode", "handsfree|ptt", "hands-free (voice detection) or push-to-talk", ("handsfree", "ptt")),
    Command("mute", "[on|off]", "stop / start listening (toggles)", ("on", "off")),
    Command("tts", "on|off", "speak the replies aloud", ("on", "off")),
    Command("file", "PATH [question]", "an audio file as your turn, with a question", path_arg=True),
    Command("devices", "", "list audio input and output devices"),
    Command("quit", "", "leave (also Ctrl-D, or Ctrl-C on an empty prompt)"),
)
BY_NAME = {c.name: c for c in COMMANDS}
ALIASES = {"exit": "quit", "q": "quit", "?": "help", "clear": "reset"}

KEYS_HELP = (
    "keys: Enter sends · Tab completes · Up/Down recall · PageUp/PageDown scroll · Ctrl-C cancels the reply "
    "(on an empty prompt: quits) · Ctrl-D quits · Ctrl-L redraws · push-to-talk: the ptt key on an empty line"
)


class CommandError(ValueError):
    """A command line that cannot be run; the message is the one-line hint shown."""


@dataclass(frozen=True)
class Parsed:
    name: str  # canonical command name
    args: tuple[str, ...]


def parse(line: str) -> Parsed:
    """Parse ``/name args...`` (quotes allowed around paths with spaces); raises CommandError with a hint."""
    body = line.strip()[1:]
    try:
        words = shlex.split(body)
    except ValueError as err:
        raise CommandError(f"cannot read that command ({err}); put paths with spaces in quotes") from None
    if not words:
        raise CommandError("type a command after /, e.g. /help")
    name = ALIASES.get(words[0].lower(), words[0].lower())
    if name not in BY_NAME:
        close = [c.name for c in COMMANDS if c.name.startswith(name[:2])]
        also = f" (did you mean /{close[0]}?)" if close else ""
        raise CommandError(f"unknown command /{words[0]}{also}; type /help for the list")
    cmd, args = BY_NAME[name], tuple(words[1:])
    if cmd.choices and args and args[0].lower() not in cmd.choices:
        raise CommandError(f"/{name} {args[0]}: use /{name} {cmd.usage}")
    if name == "file" and not args:
        raise CommandError("/file needs a path: /file PATH [question]")
    if name in ("mode", "tts") and not args:
        return Parsed(name, ())  # shows the current value / toggles
    return Parsed(name, tuple(a.lower() if cmd.choices and i == 0 else a for i, a in enumerate(args)))


HELP_COLUMN = max(len(c.name) + len(c.usage) for c in COMMANDS) + 3  # where the descriptions start, cells


def help_lines() -> list[str]:
    out = [f"/{c.name} {c.usage}".ljust(HELP_COLUMN) + c.doc for c in COMMANDS]
    return out + ["//text".ljust(HELP_COLUMN) + "sends a message that starts with a slash"]


def is_command(line: str) -> bool:
    """``/name ...`` is a command; ``//text`` sends a message that starts with a slash."""
    text = line.strip()
    return text.startswith("/") and not text.startswith("//")


def message_text(line: str) -> str:
    """The message a non-command line sends (``//text`` → ``/text``)."""
    text = line.strip()
    return text[1:] if text.startswith("//") else text
