"""The input line's slash commands in the TUI: the shared table and parser (``voiceassist.slash``) and tab
completion. Executing them is the screen's job (it owns the app and the pane)."""

from __future__ import annotations

from collections.abc import Iterable

from prompt_toolkit.completion import CompleteEvent, Completer, Completion, PathCompleter
from prompt_toolkit.document import Document

from voiceassist.slash import (  # noqa: F401 - the TUI's names for the shared parser
    ALIASES,
    BY_NAME,
    COMMANDS,
    HELP_COLUMN,
    KEYS_HELP,
    Command,
    CommandError,
    Parsed,
    help_lines,
    is_command,
    message_text,
    parse,
)


class CommandCompleter(Completer):
    """Completes command names after ``/``, then the first argument: choices or a file path."""

    def __init__(self) -> None:
        self._paths = PathCompleter(expanduser=True)

    def get_completions(self, document: Document, complete_event: CompleteEvent) -> Iterable[Completion]:
        text = document.text_before_cursor
        if not text.startswith("/") or text.startswith("//"):
            return
        if " " not in text:
            word = text[1:].lower()
            for c in COMMANDS:
                if c.name.startswith(word):
                    yield Completion(
                        "/" + c.name + " ",
                        start_position=-len(text),
                        display="/" + c.name,
                        display_meta=c.usage or c.doc[:30],
                    )
            return
        head, rest = text.split(" ", 1)
        cmd = BY_NAME.get(ALIASES.get(head[1:].lower(), head[1:].lower()))
        if cmd is None or " " in rest.strip() and not cmd.path_arg:
            return
        if cmd.choices:
            for choice in cmd.choices:
                if choice.startswith(rest.lower()):
                    yield Completion(choice, start_position=-len(rest))
        elif cmd.path_arg and " " not in rest:
            yield from self._paths.get_completions(Document(rest, len(rest)), complete_event)
