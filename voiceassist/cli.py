"""The command line: ``voiceassist [COMMAND] ...``; with no command (or only flags) it runs ``chat``.

Each command lives in ``voiceassist/commands/<name>.py`` with ``register(subparsers)``, which adds its parser and
sets ``func(args) -> int``. This file only dispatches and is the edge where errors become messages and exit
codes: a ``VoiceAssistError`` prints one line on stderr (``voiceassist: error: ...``) and exits with its code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any

from voiceassist import __version__
from voiceassist.errors import VoiceAssistError
from voiceassist.textsafe import safe_display

# Command modules, in the order `--help` lists them.
COMMAND_MODULES = (
    "chat",
    "ask",
    "segment",
    "wake",
    "devices",
    "make_tiny_model",
    "voices",
    "say",
    "kiosk",
    "status",
    "doctor",
)


class _SafeParser(argparse.ArgumentParser):
    """argparse quotes the arguments it rejects (``unrecognized arguments: ...``): those are untrusted text, so
    everything it prints goes through the same stripping as model text (#16). Subparsers inherit the class."""

    def _print_message(self, message: str, file: Any = None) -> None:
        super()._print_message(safe_display(message) if message else message, file)


def build_parser() -> argparse.ArgumentParser:
    parser = _SafeParser(
        prog="voiceassist",
        description="Real-time voice assistant: your speech goes straight into a Qwen2-Audio conversation.",
    )
    parser.add_argument("--version", action="version", version=f"voiceassist {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"voiceassist.commands.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    commands = {c for a in parser._actions if isinstance(a, argparse._SubParsersAction) for c in a.choices}
    if not argv or (argv[0] not in commands and argv[0] not in ("-h", "--help", "--version")):
        argv.insert(0, "chat")  # `voiceassist` and `voiceassist --model tiny` both mean `voiceassist chat`
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except VoiceAssistError as err:
        print(f"voiceassist: error: {safe_display(err)}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("voiceassist: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0  # `voiceassist ... | head`: the reader left; nothing to report


if __name__ == "__main__":
    raise SystemExit(main())
